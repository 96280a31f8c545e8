"""What the node makes of an object it received, before it answers the C-STORE: the encoded
data set checked whole, its header read, its pixel data compared with a stored object's.

pydicom reads a data set as far as its bytes go: an element that claims more bytes than remain
(a transfer cut short, or a length that lies, such as pixel data claiming 2,000,000,000 bytes
and carrying one MiB) silently gets what is there. :func:`read_received` walks the encoded
elements first (sequences and items of undefined length, and encapsulated pixel data fragment
by fragment) and refuses, with :class:`Unreadable` saying where, any that runs past the end.
It reads the header in place, in the buffer pynetdicom received it in: the pixel data is never
copied (a deflated data set is inflated, up to the object size limit). Needs pydicom.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # pixel data, float, double float
PREAMBLE = b"\0" * 128 + b"DICM"
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_MAX_DEPTH = 32
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class Unreadable(ValueError):
    """An encoded data set that cannot be read whole; the message says where and why."""


def valid_uid(text: str) -> bool:
    """True for a DICOM UID (PS3.5 9.1): digits in dot-separated components without leading
    zeros, at most 64 characters."""
    return len(text) <= 64 and _UID.fullmatch(text) is not None


@dataclass
class Received:
    """A received data set: its elements but the pixel data's value (a pydicom ``Dataset``),
    its transfer syntax, its bytes as encoded (a view of the buffer it arrived in) and the
    encoded pixel data value within them."""

    dataset: Dataset
    syntax: str
    encoded: memoryview
    pixels: memoryview

    @property
    def digest(self) -> str:
        """SHA-256 of the pixel data value as encoded."""
        return hashlib.sha256(self.pixels).hexdigest()


@contextlib.contextmanager
def read_received(data: io.BytesIO, syntax: str, limit: int) -> Iterator[Received]:
    """The data set pynetdicom received in ``data`` (no file meta) in transfer syntax
    ``syntax`` (a UID), checked whole; :class:`Unreadable` if it is not, or if inflated it is
    over ``limit`` bytes. What pydicom raises on a malformed element (within
    ``Dataset.iterall``) is raised as it is. The views are valid within the block."""
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    uid = UID(syntax)
    encoded = data.getbuffer()
    try:
        stream, readable = data, encoded
        if uid.is_deflated:
            readable = memoryview(_inflate(encoded, limit))
            stream = io.BytesIO(readable)
        implicit, little = uid.is_implicit_VR, uid.is_little_endian
        start, end = pixel_value_span(readable, implicit, little)
        stream.seek(0)
        dataset = read_dataset(stream, implicit, little, bytelength=len(readable),
                               stop_when=lambda tag, vr, length: tag in PIXEL_TAGS)
        for _ in dataset.iterall():  # parse every element now: a broken one raises here
            pass
        yield Received(dataset, str(uid), encoded, readable[start:end])
    finally:
        encoded.release()


def write_object(path: Path, file_meta: bytes, received: Received) -> None:
    """Write the object as a DICOM file (preamble, the encoded ``file_meta``, the data set as
    received) atomically, flushed to disk with its folder."""
    from pneumocnn.core.durable_files import durable_write

    with durable_write(path) as stream:
        stream.write(PREAMBLE)
        stream.write(file_meta)
        stream.write(received.encoded)


def same_pixels(path: Path, received: Received, file_meta: bytes) -> bool:
    """True if the stored DICOM file ``path`` holds the same pixels as ``received``: the same
    encoded pixel data in the same transfer syntax, or the same decoded pixels in another."""
    import numpy as np
    import pydicom

    stored_syntax, stored_digest = stored_pixel_digest(path)
    if stored_syntax == received.syntax:
        return stored_digest == received.digest
    try:
        with path.open("rb") as stored:
            ours = pydicom.dcmread(stored).pixel_array
        theirs = pydicom.dcmread(io.BytesIO(PREAMBLE + file_meta + bytes(received.encoded)))
        return bool(np.array_equal(ours, theirs.pixel_array))
    except Exception:  # either cannot be decoded: they are not known to be the same
        return False


def stored_pixel_digest(path: Path) -> tuple[str, str]:
    """The transfer syntax of the DICOM file ``path`` (preamble and file meta, as the node
    writes) and the SHA-256 of its encoded pixel data value, read through a memory map."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import UID

    syntax = UID(read_file_meta_info(path).TransferSyntaxUID)
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as whole:
        view = memoryview(whole)
        try:
            data = view[_data_set_start(view):]
            if syntax.is_deflated:
                data = memoryview(_inflate(data, len(view) * 64))
            start, end = pixel_value_span(data, syntax.is_implicit_VR, syntax.is_little_endian)
            digest = hashlib.sha256(data[start:end]).hexdigest()
            data.release()
        finally:
            view.release()
    return str(syntax), digest


def pixel_value_span(view: memoryview, implicit: bool, little: bool) -> tuple[int, int]:
    """Walk the elements of an encoded data set; return where the top-level pixel data value
    starts and ends in ``view`` (``(0, 0)`` if there is none). :class:`Unreadable` names the
    first element, item or fragment that runs past the end."""
    _, span = _walk(view, 0, len(view), implicit, "<" if little else ">", in_item=False, depth=0)
    return span


def _walk(view, at: int, end: int, implicit: bool, order: str, *, in_item: bool,
          depth: int) -> tuple[int, tuple[int, int]]:
    span = (0, 0)
    while at < end:
        tag, vr, length, value_at = _element(view, at, end, implicit, order)
        if tag == ITEM_END:
            if not in_item:
                raise Unreadable(f"an item delimiter outside any item at byte {at:,}")
            return value_at, span
        if length == UNDEFINED:
            if tag in PIXEL_TAGS:
                value_end = _fragments(view, value_at, end, order)
            elif vr in (None, b"SQ", b"UN"):  # an undefined-length UN holds implicit VR items
                value_end = _sequence(view, value_at, end, implicit or vr == b"UN", order, depth + 1)
            else:
                raise Unreadable(f"{_name(tag)} ({vr.decode('latin-1')}) has an undefined length")
        else:
            value_end = value_at + length
            if value_end > end:
                raise Unreadable(f"{_name(tag)} claims {length:,} bytes but {end - value_at:,} "
                                 "remain: the object is cut short, or its length lies")
        if tag in PIXEL_TAGS and not in_item:
            span = (value_at, value_end)
        at = value_end
    if in_item:
        raise Unreadable("an item of undefined length has no delimiter: the object is cut short")
    return at, span


def _element(view, at: int, end: int, implicit: bool, order: str):
    """The tag, VR (None when implicit), value length and value offset of the element at ``at``."""
    if end - at < 8:
        raise Unreadable(f"the data set ends inside an element header at byte {at:,}: the "
                         "object is cut short")
    group, element = struct.unpack_from(f"{order}HH", view, at)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, None, struct.unpack_from(f"{order}L", view, at + 4)[0], at + 8
    vr = bytes(view[at + 4 : at + 6])
    if vr in _LONG_VRS:
        if end - at < 12:
            raise Unreadable(f"the data set ends inside {_name(tag)}'s header: the object is "
                             "cut short")
        return tag, vr, struct.unpack_from(f"{order}L", view, at + 8)[0], at + 12
    return tag, vr, struct.unpack_from(f"{order}H", view, at + 6)[0], at + 8


def _sequence(view, at: int, end: int, implicit: bool, order: str, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise Unreadable(f"sequences nested deeper than {_MAX_DEPTH}")
    while True:
        tag, _, length, at = _element(view, at, end, True, order)
        if tag == SEQUENCE_END:
            return at
        if tag != ITEM:
            raise Unreadable(f"a sequence holds {_name(tag)} where an item should be")
        if length == UNDEFINED:
            at, _ = _walk(view, at, end, implicit, order, in_item=True, depth=depth)
        elif at + length > end:
            raise Unreadable(f"an item claims {length:,} bytes but {end - at:,} remain: the "
                             "object is cut short, or its length lies")
        else:
            at += length


def _fragments(view, at: int, end: int, order: str) -> int:
    """The end of encapsulated pixel data: fragments of defined length up to the delimiter."""
    while True:
        tag, _, length, at = _element(view, at, end, True, order)
        if tag == SEQUENCE_END:
            return at
        if tag != ITEM or length == UNDEFINED:
            raise Unreadable(f"encapsulated pixel data holds {_name(tag)} of length "
                             f"0x{length:X} where a fragment should be")
        if at + length > end:
            raise Unreadable(f"a pixel data fragment claims {length:,} bytes but "
                             f"{end - at:,} remain: the object is cut short, or its length lies")
        at += length


def _data_set_start(view: memoryview) -> int:
    """Where the data set starts in a DICOM file: after the preamble and the file meta
    elements (group 0002, explicit VR little endian)."""
    at = 132 if bytes(view[128:132]) == b"DICM" else 0
    while len(view) - at >= 8 and struct.unpack_from("<H", view, at)[0] == 0x0002:
        _, _, length, value_at = _element(view, at, len(view), False, "<")
        at = value_at + length
    return at


def _inflate(data, limit: int) -> bytes:
    """A deflated data set (raw deflate, PS3.5 A.5) inflated, refused past ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise Unreadable(f"its deflated data set cannot be inflated ({error})") from None
    if len(inflated) > limit:
        raise Unreadable(f"its deflated data set inflates to over {limit:,} bytes")
    return inflated


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
