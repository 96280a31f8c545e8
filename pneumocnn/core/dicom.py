"""DICOM input: pixel data as a radiology viewer displays it, as 8-bit grayscale.

Needs the ``dicom`` extra (``pip install 'pneumocnn[dicom]'``: pydicom and the pylibjpeg
decoders). The display pipeline of DICOM PS3.3 C.11: the modality LUT (rescale slope and
intercept), then the first VOI window (centre / width, or a VOI LUT), else the full range the
stored bits can hold; MONOCHROME1 is inverted so that bone is bright; colour images are
converted to luminance; of a multi-frame image the first frame is used.

Files are read as viewers read them: with or without the 128-byte preamble and ``DICM``
marker, and with or without file meta information (old ACR-NEMA files). A file whose meta
information names no transfer syntax is read in the encoding its data set shows (pydicom tells
implicit from explicit VR, little from big endian, by its first element), with its pixel data
taken as uncompressed. Before any pixel is decoded the tags go through the input guard
(:mod:`pneumocnn.core.guard`). What pydicom and its decoders log while reading a file for
pneumocnn stays out of the application's log: a failure reaches the caller as one line, the
:class:`InputError`'s reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from pneumocnn.core import guard
from pneumocnn.core.errors import InputError, MissingDependencyError, NotFrontalChestError

if TYPE_CHECKING:
    from pydicom import Dataset

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
SUFFIXES = frozenset({".dcm", ".dicom"})
DICOM_HEAD = PREAMBLE_LENGTH + len(MAGIC)
IDENTIFIERS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "StudyDate")
# copied from the X-ray so that the report files under the same patient and study
PATIENT_AND_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
                     "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                     "AccessionNumber")
# the header elements kept of a file read (each once): the identifiers, the SOP class, and the
# patient and study elements
HEADER = tuple(dict.fromkeys((*IDENTIFIERS, "SOPClassUID", *PATIENT_AND_STUDY)))
INSTALL = "pip install 'pneumocnn[dicom]'"
# a data set without preamble starts with a tag of the file meta (0002) or identifying (0008)
# group; no image format pneumocnn reads starts like that
_BARE_STARTS = (b"\x02\x00", b"\x08\x00")
_BARE_BIG_ENDIAN_START = b"\x00\x08"
# the display transform works on bands of rows of about this many pixels (8 MiB a float copy)
_BAND_PIXELS = 1 << 20
# JPEG's EOI and JPEG 2000's EOC marker: the last two bytes of every whole codestream
_END_OF_IMAGE = b"\xff\xd9"
# the loggers of pydicom and its decoder plugins (top-level names), and Python's py.warnings
_LIBRARIES = frozenset({"pydicom", "pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls", "py"})


@dataclass(frozen=True)
class DicomHeader:
    """What pneumocnn keeps of a DICOM file's header: the elements of :data:`HEADER` it holds,
    as pydicom read them (a ``Dataset`` without pixels: values with their VRs, which a report
    on the image copies)."""

    elements: Dataset

    @property
    def identifiers(self) -> dict[str, str]:
        """The study identifiers (:data:`IDENTIFIERS`) the file holds, as text."""
        return _identifiers(self.elements)


@dataclass(frozen=True)
class DicomImage:
    """Display-ready uint8 ``(H, W)`` pixels and the header they were read with."""

    pixels: np.ndarray
    header: DicomHeader


def read_identifiers(path: str | os.PathLike) -> dict[str, str]:
    """The study identifiers of a DICOM file, without reading its pixels; ``{}`` for a file
    that is not DICOM, or when pydicom is not installed."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES and not _starts_like_dicom(path):
        return {}
    try:
        import pydicom
    except ImportError:
        return {}
    with holding_library_logs():
        try:
            return _identifiers(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except Exception:  # a file that cannot be read has no identifiers to show
            return {}


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or a file without suffix that starts like DICOM
    (see :func:`looks_like_dicom`)."""
    if path.suffix.lower() in SUFFIXES:
        return True
    return not path.suffix and _starts_like_dicom(path)


def _starts_like_dicom(path: Path) -> bool:
    if not path.is_file():  # never open a pipe or device: it could block
        return False
    try:
        with path.open("rb") as stream:
            return looks_like_dicom(stream.read(DICOM_HEAD))
    except OSError:
        return False


def looks_like_dicom(head: bytes) -> bool:
    """True when ``head`` (the first 132 bytes of a file) carries the ``DICM`` marker, or
    starts as a data set without preamble does: a group 0002 or 0008 tag followed by an
    explicit VR or a short implicit-VR length (little endian), or a group 0008 tag and an
    explicit VR (big endian)."""
    if head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == MAGIC:
        return True
    if len(head) < 8:
        return False
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    if head[:2] in _BARE_STARTS:
        return explicit or int.from_bytes(head[4:8], "little") < 0x10000
    return head[:2] == _BARE_BIG_ENDIAN_START and explicit


def read_dicom(stream: BinaryIO, name: str, guard_tags: bool = True,
               on_header: Callable[[DicomHeader], None] | None = None) -> DicomImage:
    """Read a DICOM file from ``stream``. Raises :class:`InputError` naming ``name`` if its
    pixels cannot be shown, :class:`NotFrontalChestError` if ``guard_tags`` and its tags say it
    is not a frontal chest X-ray (:mod:`pneumocnn.core.guard`), and
    :class:`MissingDependencyError` if pydicom is not installed. ``on_header`` is called with
    the file's header as soon as it is read: before the guard or the pixels can refuse the
    file, so that a caller keeps the header of a file refused too."""
    try:
        import pydicom
    except ImportError:
        raise MissingDependencyError(f"{name}: DICOM input needs pydicom: {INSTALL}") from None
    # pydicom and its decoders, given damaged or hostile bytes, raise errors of many kinds
    # (struct.error, NotImplementedError, their own...): every one is the file's fault here
    with holding_library_logs() as logged:
        try:
            dataset = pydicom.dcmread(stream, force=True)
            header = DicomHeader(_kept(dataset))
            flagged = guard.reason(_guard_tags(dataset)) if guard_tags else None
        except Exception as error:
            raise InputError(name, f"cannot read DICOM ({one_line(error)})") from error
        if on_header is not None:
            on_header(header)
        if flagged:
            raise NotFrontalChestError(name, flagged)
        if "PixelData" not in dataset:
            said = f": {one_line(logged[-1])}" if logged else ""
            raise InputError(name, f"DICOM file holds no image (no PixelData){said}")
        try:
            _settle_transfer_syntax(dataset)
            pixels = _stored_pixels(dataset, name)
            return DicomImage(_display(pixels, dataset, name), header)
        except InputError:
            raise
        except Exception as error:
            raise InputError(name, f"cannot decode DICOM pixel data ({one_line(error)})") from error


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixel data pneumocnn can decode here: the uncompressed ones,
    and the compressed ones an installed pydicom decoder plugin handles (needs pydicom)."""
    from pydicom import uid
    from pydicom.pixels.decoders.base import get_decoder

    syntaxes = [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian,
                uid.DeflatedExplicitVRLittleEndian, uid.ExplicitVRBigEndian]
    for syntax in uid.AllTransferSyntaxes:
        if syntax.is_compressed:
            with contextlib.suppress(NotImplementedError):
                if get_decoder(syntax).is_available:
                    syntaxes.append(syntax)
    return [str(syntax) for syntax in syntaxes]


def one_line(message: object) -> str:
    """A message of several lines (as pydicom gives when every decoder failed) as one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], "; ".join(lines[1:])
    return f"{head} {rest}" if head.endswith(":") else "; ".join(filter(None, (head, rest)))


class _HeldLogs(logging.Filter):
    """Holds back the warnings and errors pydicom and its decoders log (an error with its
    traceback for each decoder that fails) while this thread reads a file for pneumocnn;
    their substance reaches the caller in the :class:`InputError`. Other threads' records and
    records below WARNING pass."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(self.reading, "held", None)
        if held is None or record.levelno < logging.WARNING:
            return True
        if record.name != "py.warnings":  # pydicom warns what it logs: one is enough
            held.append(record.getMessage())
        return False


_HELD_LOGS = _HeldLogs()


@contextlib.contextmanager
def holding_library_logs() -> Iterator[list[str]]:
    """Hold back the warnings and errors pydicom and its decoders log in this thread within
    the block (and Python warnings, where ``logging.captureWarnings`` routes them to the log);
    yield the list of their messages."""
    names = ["py.warnings", *logging.Logger.manager.loggerDict]  # py.warnings: made on first use
    for name in names:
        if name.split(".")[0] in _LIBRARIES:
            logging.getLogger(name).addFilter(_HELD_LOGS)  # once: a filter is added only once
    held: list[str] = []
    _HELD_LOGS.reading.held = held
    try:
        yield held
    finally:
        _HELD_LOGS.reading.held = None


def _identifiers(dataset) -> dict[str, str]:
    return {key: str(dataset.get(key, "")) for key in IDENTIFIERS if key in dataset}


def _kept(dataset) -> Dataset:
    """The elements of :data:`HEADER` in ``dataset``, as a data set of their own."""
    from pydicom import Dataset

    kept = Dataset()
    for keyword in HEADER:
        if keyword in dataset:
            kept[keyword] = dataset[keyword]
    return kept


def _guard_tags(dataset) -> dict[str, str]:
    """The tags the guard reads, as text."""
    tags = {key: _text(dataset.get(key, "")) for key in guard.TAGS if key in dataset}
    species = dataset.get("PatientSpeciesCodeSequence")
    if species:
        tags[guard.SPECIES_CODE] = _text(species[0].get("CodeValue", ""))
    return tags


def _text(value) -> str:
    from pydicom.multival import MultiValue

    return " ".join(map(str, value)) if isinstance(value, MultiValue) else str(value or "")


def _settle_transfer_syntax(dataset) -> None:
    """Give a data set read without a transfer syntax in its meta information (no meta, or
    meta without (0002,0010)) the one its own encoding showed, uncompressed, as viewers do."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(dataset, "file_meta", None) is None:
        dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little_endian = dataset.original_encoding
    if implicit is not False:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = (
            ExplicitVRBigEndian if little_endian is False else ExplicitVRLittleEndian)


def _stored_pixels(dataset, name: str) -> np.ndarray:
    from pydicom.pixels.decoders.base import get_decoder

    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and rows * columns > limit:
        raise InputError(name, f"image is {columns}x{rows} pixels, over the {limit:,}-pixel "
                               "safety limit (PIL.Image.MAX_IMAGE_PIXELS)")
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            raise InputError(name, f"pixel data is in a transfer syntax pydicom cannot decode "
                                   f"({syntax.name})") from None
        if not available:
            raise InputError(name, f"pixel data is compressed ({syntax.name}) and no installed "
                                   f"decoder handles it: {INSTALL}")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if _frames_end_with_a_marker(syntax):
        _check_first_frame_whole(dataset, frames, name)
    dataset.pixel_array_options(index=0)  # of several frames, only the first is decoded
    pixels = dataset.pixel_array
    del dataset.PixelData  # the encoded bytes are not needed once decoded: free them now
    colour = int(dataset.get("SamplesPerPixel", 1)) == 3
    if pixels.ndim != 2 + colour or pixels.size == 0:
        raise InputError(name, f"DICOM pixel array of shape {pixels.shape} is not one 2-D image")
    return pixels


def _frames_end_with_a_marker(syntax) -> bool:
    """True for the JPEG, JPEG-LS and JPEG 2000 transfer syntaxes, whose codestreams end with
    an end marker (RLE's have none: its decoder checks segment lengths itself)."""
    from pydicom import uid

    return syntax in (*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes,
                      *uid.JPEG2000TransferSyntaxes)


def _check_first_frame_whole(dataset, frames: int, name: str) -> None:
    """Refuse a JPEG-family frame (JPEG baseline, extended, lossless, JPEG-LS, JPEG 2000) that
    does not end with its end-of-image marker: a cut codestream. Some decoders (libjpeg among
    them) fill what is missing without a word, and a partial X-ray must never be scored."""
    from pydicom.encaps import generate_frames

    syntax = dataset.file_meta.TransferSyntaxUID
    frame = next(generate_frames(dataset.PixelData, number_of_frames=frames), b"")
    # fragments are padded to even length, by some encoders with 0xFF (a JPEG fill byte)
    if not frame.rstrip(b"\x00\xff").endswith(_END_OF_IMAGE):
        raise InputError(name, f"pixel data is cut short: the {syntax.name} codestream of the "
                               "first frame has no end-of-image marker (damaged or truncated file)")


def _display(stored: np.ndarray, dataset, name: str) -> np.ndarray:
    """Luminance of colour pixels, modality LUT, VOI window or full stored range, MONOCHROME1
    inversion -> uint8; computed a band of rows at a time, so that the floating-point copies
    of a very large image (8 bytes a pixel, several of them) never exist whole."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    voi_lut = "VOILUTSequence" in dataset and not (
        "WindowCenter" in dataset and "WindowWidth" in dataset)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        centre = float(_first(dataset.WindowCenter))
        width = max(float(_first(dataset.WindowWidth)), 1.0)
        low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    elif voi_lut:
        low, high = 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        low, high = _stored_range(dataset)
    inverted = str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    shown = np.empty(stored.shape[:2], dtype=np.uint8)
    band = max(1, _BAND_PIXELS // max(1, stored.shape[1]))
    for top in range(0, stored.shape[0], band):
        rows = stored[top : top + band]
        if rows.ndim == 3:
            rows = rows.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if voi_lut:
            values = np.asarray(apply_voi_lut(rows, dataset, index=0), dtype=np.float64)
        else:
            values = np.asarray(apply_modality_lut(rows, dataset), dtype=np.float64)
        if not np.isfinite(values).all():
            raise InputError(name, "DICOM pixel values are not finite")
        scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
        if inverted:
            scaled = 1.0 - scaled
        shown[top : top + band] = np.rint(scaled * 255.0)
    return shown


def _stored_range(dataset) -> tuple[float, float]:
    """The values the stored bits can hold, through the modality rescale."""
    bits = int(dataset.get("BitsStored", 8))
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _first(value):
    """Window tags may hold several values; the first is the default view."""
    from pydicom.multival import MultiValue

    return value[0] if isinstance(value, MultiValue) else value
