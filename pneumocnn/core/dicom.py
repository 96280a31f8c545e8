"""DICOM input: pixel data as a radiology viewer displays it, as 8-bit grayscale.

Needs pydicom (``pip install 'pneumocnn[dicom]'``). The display pipeline of DICOM PS3.3 C.11:
the modality LUT (rescale slope and intercept), then the first VOI window (centre / width, or a
VOI LUT), else the full range the stored bits can hold; MONOCHROME1 is inverted so that bone is
bright; colour images are converted to luminance; of a multi-frame image the first frame is
used. Compressed pixel data that needs a decoder plugin which is not installed is refused with
the name of the package to install.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pneumocnn.core.errors import InputError, MissingDependencyError

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
SUFFIXES = frozenset({".dcm", ".dicom"})
DICOM_HEAD = PREAMBLE_LENGTH + len(MAGIC)
IDENTIFIERS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "StudyDate")


@dataclass(frozen=True)
class DicomImage:
    """Display-ready uint8 ``(H, W)`` pixels and the study identifiers found in the file."""

    pixels: np.ndarray
    identifiers: dict[str, str]


def read_identifiers(path: str | os.PathLike) -> dict[str, str]:
    """The study identifiers of a DICOM file, without reading its pixels; ``{}`` for a file
    that is not DICOM, or when pydicom is not installed."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES and not _preamble_at(path):
        return {}
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return {}
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
        return {}
    return {key: str(dataset.get(key, "")) for key in IDENTIFIERS if key in dataset}


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or a file without suffix that starts like DICOM."""
    if path.suffix.lower() in SUFFIXES:
        return True
    return not path.suffix and _preamble_at(path)


def _preamble_at(path: Path) -> bool:
    if not path.is_file():  # never open a pipe or device: it could block
        return False
    try:
        with path.open("rb") as stream:
            return has_dicom_preamble(stream.read(DICOM_HEAD))
    except OSError:
        return False


def has_dicom_preamble(head: bytes) -> bool:
    """True when ``head`` (the first 132 bytes of a file) carries the ``DICM`` marker."""
    return head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == MAGIC


def read_dicom(stream: BinaryIO, name: str) -> DicomImage:
    """Read a DICOM file from ``stream``; raise :class:`InputError` naming ``name`` if its
    pixels cannot be shown, :class:`MissingDependencyError` if pydicom is not installed."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise MissingDependencyError(
            f"{name}: DICOM input needs pydicom: pip install 'pneumocnn[dicom]'"
        ) from None
    try:
        dataset = pydicom.dcmread(stream, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as error:
        raise InputError(name, f"cannot read DICOM ({error})") from error
    if "PixelData" not in dataset:
        raise InputError(name, "DICOM file holds no image (no PixelData)")
    pixels = _stored_pixels(dataset, name)
    identifiers = {key: str(dataset.get(key, "")) for key in IDENTIFIERS if key in dataset}
    return DicomImage(_display(pixels, dataset, name), identifiers)


def _stored_pixels(dataset, name: str) -> np.ndarray:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        if syntax is not None and syntax.is_compressed:
            raise InputError(
                name,
                f"pixel data is compressed ({syntax.name}) and no installed decoder handles it: "
                "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)",
            ) from error
        raise InputError(name, f"cannot decode DICOM pixel data ({error})") from error
    except (ValueError, AttributeError, KeyError, TypeError) as error:
        raise InputError(name, f"cannot decode DICOM pixel data ({error})") from error
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if int(dataset.get("SamplesPerPixel", 1)) == 3:
        rgb = pixels.astype(np.float64)
        pixels = rgb @ np.array([0.299, 0.587, 0.114])
    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(name, f"DICOM pixel array of shape {pixels.shape} is not one 2-D image")
    return pixels


def _display(stored: np.ndarray, dataset, name: str) -> np.ndarray:
    """Modality LUT, VOI window or full stored range, MONOCHROME1 inversion -> uint8."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        centre = float(_first(dataset.WindowCenter))
        width = max(float(_first(dataset.WindowWidth)), 1.0)
        low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    elif "VOILUTSequence" in dataset:
        values = np.asarray(apply_voi_lut(stored, dataset, index=0), dtype=np.float64)
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = _stored_range(dataset)
    if not np.isfinite(values).all():
        raise InputError(name, "DICOM pixel values are not finite")
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.rint(scaled * 255.0).astype(np.uint8)


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
