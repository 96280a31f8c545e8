"""DICOM files for the tests, made from pixels: uncompressed in each encoding (little and big
endian, implicit and explicit VR, deflated), compressed in every common transfer syntax, and
without preamble or file meta.

pydicom encodes RLE, JPEG 2000 (pylibjpeg-openjpeg) and JPEG-LS (pyjpegls); the JPEG codestreams
are made here: baseline by Pillow, extended by relabelling Pillow's baseline frame as SOF1 (an
8-bit extended-process frame is that same codestream), lossless by the small process-14
encoder below.
"""

from __future__ import annotations

import importlib.util
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames

DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
HAVE_PYJPEGLS = importlib.util.find_spec("jpeg_ls") is not None


def dx_dataset(pixels: np.ndarray, bits_stored: int = 8, monochrome1: bool = False,
               window: tuple[float, float] | None = None, **tags) -> Dataset:
    """A DX data set (Explicit VR Little Endian, file meta included) holding ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    dataset.BitsAllocated = 8 if bits_stored <= 8 else 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    for key, value in tags.items():
        setattr(dataset, key, value)
    dataset.PixelData = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16).tobytes()
    return dataset


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int = 8, **options) -> Path:
    """A DICOM file (preamble, file meta, Explicit VR Little Endian, DX) holding ``pixels``;
    ``options`` as :func:`dx_dataset` takes them."""
    dx_dataset(pixels, bits_stored, **options).save_as(path, enforce_file_format=True)
    return path


def compressed(dataset: Dataset, syntax: uid.UID) -> Dataset:
    """``dataset`` with its pixel data compressed in ``syntax``."""
    pixels = dataset.pixel_array
    bits = int(dataset.BitsStored)
    if syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit):
        frame = pillow_jpeg(pixels, extended=syntax == uid.JPEGExtended12Bit)
    elif syntax in (uid.JPEGLossless, uid.JPEGLosslessSV1):
        frame = jpeg_lossless(pixels, bits)
    else:
        options = {uid.JPEG2000: {"j2k_cr": [10]}, uid.JPEGLSNearLossless: {"jls_error": 2}}
        dataset.compress(syntax, **options.get(syntax, {}))
        return dataset
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = syntax
    if syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit):
        dataset.LossyImageCompression = "01"
    return dataset


def pillow_jpeg(pixels: np.ndarray, extended: bool = False) -> bytes:
    """Pillow's baseline JPEG (quality 95) of 8-bit ``pixels``; with ``extended`` its frame
    marker is SOF1, the extended sequential process (8-bit samples, Huffman coding)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=95)
    data = bytearray(buffer.getvalue())
    if extended:
        offset = 2
        while data[offset + 1] != 0xC0:  # walk the marker segments to the frame header
            offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
        data[offset + 1] = 0xC1
    return bytes(data)


def jpeg_lossless(pixels: np.ndarray, bits: int) -> bytes:
    """A JPEG lossless codestream (ITU T.81 process 14, first-order prediction: selection
    value 1) of one-component ``pixels`` of ``bits`` precision. Its Huffman table gives each
    difference category (0-16) a 5-bit code."""
    values = pixels.astype(np.int64)
    predicted = np.empty_like(values)
    predicted[0, 0] = 1 << (bits - 1)
    predicted[0, 1:] = values[0, :-1]  # first row: the sample to the left
    predicted[1:, 0] = values[:-1, 0]  # first column: the sample above
    predicted[1:, 1:] = values[1:, :-1]
    difference = (values - predicted + 32768) % 65536 - 32768  # modulo 2**16 (T.81 H.1.2.1)
    category = np.zeros_like(difference)
    nonzero = difference != 0
    category[nonzero] = np.frexp(np.abs(difference[nonzero]))[1]  # bit length of |difference|
    extra_length = np.where(category == 16, 0, category)  # category 16 has no extra bits
    extra = np.where(difference < 0, difference + (1 << extra_length) - 1, difference)
    codes = ((category << extra_length) | np.where(category == 16, 0, extra)).ravel()
    lengths = (5 + extra_length).ravel()
    starts = np.cumsum(lengths) - lengths
    position = np.arange(lengths.sum()) - np.repeat(starts, lengths)  # bit within its code
    stream = (np.repeat(codes, lengths) >> (np.repeat(lengths, lengths) - 1 - position)) & 1
    stream = np.concatenate([stream, np.ones(-stream.size % 8, np.int64)])  # pad with 1-bits
    entropy = np.packbits(stream.astype(np.uint8)).tobytes().replace(b"\xff", b"\xff\x00")
    rows, columns = pixels.shape
    frame = struct.pack(">BHHB", bits, rows, columns, 1) + bytes([1, 0x11, 0])
    table = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    scan = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, Ah/Al 0

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    return (b"\xff\xd8" + segment(0xC3, frame) + segment(0xC4, table) + segment(0xDA, scan)
            + entropy + b"\xff\xd9")


def cut_codestream(dataset: Dataset, kept: float) -> Dataset:
    """``dataset`` (compressed, one frame) with only the first ``kept`` share of its
    codestream: a transfer cut short."""
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = encapsulate([frame[: int(len(frame) * kept)]])
    return dataset


def uncompressed(dataset: Dataset, syntax: uid.UID) -> Dataset:
    """``dataset`` (as :func:`dx_dataset` makes it) to be written in the uncompressed
    ``syntax``: for big endian its pixel bytes are swapped, as pydicom writes them as they are."""
    if not syntax.is_little_endian and int(dataset.BitsAllocated) == 16:
        dataset.PixelData = dataset.pixel_array.astype(">u2").tobytes()
        dataset["PixelData"].VR = "OW"
    dataset.file_meta.TransferSyntaxUID = syntax
    return dataset


def write_bare(path: Path, dataset: Dataset) -> Path:
    """``dataset`` written as old ACR-NEMA files are, in the encoding its file meta names: no
    preamble, no file meta."""
    syntax = dataset.file_meta.TransferSyntaxUID
    del dataset.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, implicit_vr=syntax.is_implicit_VR,
                     little_endian=syntax.is_little_endian)
    path.write_bytes(buffer.getvalue())
    return path
