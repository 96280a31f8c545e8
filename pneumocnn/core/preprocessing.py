"""The one preprocessing path shared by training, evaluation and inference.

An input (file path, bytes, binary file, PIL image or numpy array) becomes:

1. an 8-bit grayscale image: large JPEGs are decoded at a reduced scale that keeps at least
   twice the model input size (Pillow's draft mode); EXIF orientation is applied; colour,
   palette, CMYK and alpha images are converted to luminance; 16-bit images are scaled by
   their bit depth; DICOM files are shown as a viewer shows them (:mod:`pneumocnn.core.dicom`),
   and those whose tags say they are not a frontal chest X-ray are refused unless the input
   guard is turned off (:mod:`pneumocnn.core.guard`);
2. ``pixels``: if the model asks for it (``crop="margins"``), the near-black or near-white
   bands at the image's edges (collimation, padding, detector borders) cut off, so that framing
   differences between machines do not reach the model; then resized to the model input
   (bilinear, antialiased), uint8 ``(H, W)``; then, if the model asks for it,
   intensity-normalised: ``"equalize"`` (histogram
   equalisation) or ``"autocontrast"`` (stretch the 1st-99th percentile to 0-255), so that
   exposures and contrast curves of different machines look alike;
3. the model input: ``pixels * scale`` as float32, repeated to the model's channel count.

Training caches step 2 and applies step 3 in the TensorFlow graph with the same arithmetic;
everything else calls :func:`preprocess`. Only Pillow and numpy are used here.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumocnn.core.dicom import DICOM_HEAD, DicomHeader, looks_like_dicom, read_dicom
from pneumocnn.core.dicom import SUFFIXES as DICOM_SUFFIXES
from pneumocnn.core.errors import InputError

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray

_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_NORMALIZATIONS = {
    "none": lambda image: image,
    "equalize": ImageOps.equalize,
    "autocontrast": lambda image: ImageOps.autocontrast(image, cutoff=1),
}
# What each normalisation and crop does, in a phrase (the command line's help lists them).
NORMALIZATIONS_ABOUT = {
    "none": "the pixels as decoded",
    "equalize": "histogram equalisation",
    "autocontrast": "the 1st-99th percentile stretched to 0-255",
}
CROPS_ABOUT = {
    "none": "the whole image",
    "margins": "cut dark or bright bands at the image edges before resizing",
}
# An edge row or column is margin while under 2 % of its pixels lie between these levels.
_MARGIN_DARK, _MARGIN_BRIGHT, _MARGIN_CONTENT = 12, 243, 0.02
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Only these decoders ever see an input: no PostScript (Ghostscript), PDF or other exotic formats.
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP", "JPEG2000", "PPM")


@dataclass(frozen=True)
class Preprocessing:
    """How an X-ray becomes a model input: size, channels, margin crop, resampling, intensity
    normalisation and scale."""

    height: int = 150
    width: int = 150
    channels: int = 3
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    normalize: str = "none"
    crop: str = "none"

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, numbers.Real) or not (
                math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in _RESAMPLING:
            raise ValueError(f"resize must be one of {sorted(_RESAMPLING)}, got {self.resize!r}")
        if self.normalize not in _NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(_NORMALIZATIONS)}, "
                             f"got {self.normalize!r}")
        if self.crop not in CROPS_ABOUT:
            raise ValueError(f"crop must be one of {list(CROPS_ABOUT)}, got {self.crop!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input shape ``(height, width, channels)``."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form stored in model files; ``crop`` only when one is used, so
        that models without one stay readable by pneumocnn 0.1."""
        fields = asdict(self)
        if self.crop == "none":
            del fields["crop"]
        return {"color": "gray", **fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        fields = dict(data)
        color = fields.pop("color", "gray")
        if color != "gray":
            raise ValueError(f"unsupported colour handling {color!r}")
        return cls(**fields)


def source_name(source: object) -> str:
    """Return a short human name for an input, used in error messages and results."""
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, (str, bytes)) else f"<{type(source).__name__}>"


def preprocess(source: ImageInput, spec: Preprocessing, name: str | None = None) -> np.ndarray:
    """Turn one input into the float32 ``(H, W, C)`` array a model with ``spec`` expects."""
    return to_model_input(load_pixels(source, spec, name), spec)


def load_pixels(source: ImageInput, spec: Preprocessing, name: str | None = None, *,
                guard: bool = True) -> np.ndarray:
    """Decode one input, resize it to the model input and normalise its intensities as
    ``spec`` says: uint8 ``(height, width)``.

    Raises :class:`~pneumocnn.core.errors.InputError` naming the input when it cannot be used,
    and, with ``guard``, :class:`~pneumocnn.core.errors.NotFrontalChestError` for a DICOM file
    whose tags say it is not a frontal chest X-ray (:mod:`pneumocnn.core.guard`).
    """
    name = name or source_name(source)
    return gray_to_pixels(_to_gray(source, spec, name, guard), spec)


def gray_to_pixels(gray: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Step 2 on an 8-bit grayscale image (as :func:`load_gray` decodes it for ``spec``): the
    uint8 ``(height, width)`` pixels :func:`load_pixels` gives."""
    if spec.crop == "margins":
        gray = gray.crop(margin_box(gray))
    resized = gray.resize((spec.width, spec.height), _RESAMPLING[spec.resize])
    return np.asarray(_NORMALIZATIONS[spec.normalize](resized), dtype=np.uint8)


def to_model_input(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Scale uint8 ``(H, W)`` pixels and repeat them to ``spec.channels``: float32 ``(H, W, C)``."""
    scaled = pixels.astype(np.float32) * np.float32(spec.scale)
    return np.repeat(scaled[..., np.newaxis], spec.channels, axis=-1)


def to_model_inputs(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """:func:`to_model_input` over a batch: uint8 ``(N, H, W)`` to float32 ``(N, H, W, C)``."""
    return np.stack([to_model_input(p, spec) for p in pixels])


def crop_margins(image: Image.Image) -> Image.Image:
    """Cut the bands at the edges of an 8-bit grayscale image where almost nothing lies between
    near-black and near-white (collimation, padding, detector borders); an image that is all
    margin is returned as it is."""
    return image.crop(margin_box(image))


def margin_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The box ``(left, top, right, bottom)`` :func:`crop_margins` keeps of an 8-bit grayscale
    image: the whole image when it is all margin."""
    pixels = np.asarray(image)
    content = (pixels > _MARGIN_DARK) & (pixels < _MARGIN_BRIGHT)
    rows = np.flatnonzero(content.mean(axis=1) >= _MARGIN_CONTENT)
    columns = np.flatnonzero(content.mean(axis=0) >= _MARGIN_CONTENT)
    if rows.size < 2 or columns.size < 2:
        return (0, 0, image.width, image.height)
    return (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)


def load_gray(source: ImageInput, name: str | None = None, *, spec: Preprocessing | None = None,
              guard: bool = False,
              on_header: Callable[[DicomHeader], None] | None = None) -> Image.Image:
    """Decode one input to an 8-bit grayscale image (step 1 above): at full resolution, or,
    with ``spec``, as :func:`load_pixels` decodes it for that model (a large JPEG at a reduced
    scale; :func:`gray_to_pixels` then gives the same pixels). With ``guard``, a DICOM file
    whose tags say it is not a frontal chest X-ray is refused, as :func:`load_pixels` refuses
    it. ``on_header`` is called with a DICOM file's header once read (also when the file is
    then refused; see :func:`~pneumocnn.core.dicom.read_dicom`): the file is read once for
    both. Raises :class:`~pneumocnn.core.errors.InputError` naming the input."""
    return _to_gray(source, spec, name or source_name(source), guard, on_header)


def _to_gray(source: ImageInput, spec: Preprocessing | None, name: str, guard: bool,
             on_header: Callable[[DicomHeader], None] | None = None) -> Image.Image:
    """Step 1; with a ``spec``, JPEGs are decoded at the reduced scale that suits it; with
    ``guard``, DICOM tags go through the input guard."""
    if isinstance(source, np.ndarray):
        return _array_to_gray(source, name)
    if isinstance(source, Image.Image):
        return _image_to_gray(source, name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with _open_file(path, name) as stream:
            return _decode(stream, spec, name, guard, on_header,
                           path.suffix.lower() in DICOM_SUFFIXES)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), spec, name, guard, on_header)
    if hasattr(source, "read"):
        return _decode(source, spec, name, guard, on_header)
    raise InputError(name, f"unsupported input type {type(source).__name__}")


def _open_file(path: Path, name: str) -> BinaryIO:
    """Open a regular file for reading; a folder, pipe or device is refused without blocking."""
    if path.is_dir():
        raise InputError(name, "is a folder, not an image file")
    try:
        stream = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115
    except OSError as error:
        raise InputError(name, error.strerror or str(error)) from error
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        stream.close()
        raise InputError(name, "is not a regular file (a pipe, socket or device)")
    return stream


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _decode(stream: BinaryIO, spec: Preprocessing | None, name: str, guard: bool,
            on_header: Callable[[DicomHeader], None] | None, dicom_suffix: bool = False
            ) -> Image.Image:
    if dicom_suffix or _starts_like_dicom(stream):
        return Image.fromarray(read_dicom(stream, name, guard, on_header).pixels)
    try:
        with Image.open(stream, formats=FORMATS) as image:
            _check_size(image.width, image.height, name)
            if image.format == "JPEG" and spec is not None:
                # twice the input, as Image.thumbnail's reducing_gap=2: a DCT-scaled decode
                # barely above the input aliases (mean error up to 3.4 levels on full-size X-rays)
                side = 2 * max(spec.height, spec.width)
                image.draft("L" if image.mode in ("L", "RGB") else None, (side, side))
            image.load()
            return _image_to_gray(image, name)
    except UnidentifiedImageError as error:
        raise InputError(name, "not a recognised image file") from error
    except Image.DecompressionBombError as error:
        raise InputError(name, f"image is over the pixel safety limit "
                               f"(PIL.Image.MAX_IMAGE_PIXELS): {error}") from error
    except InputError:
        raise
    except _DECODE_ERRORS as error:
        raise InputError(name, f"cannot decode image ({error})") from error


def _starts_like_dicom(stream: BinaryIO) -> bool:
    try:
        start = stream.tell()
        head = stream.read(DICOM_HEAD)
        stream.seek(start)
    except (OSError, ValueError):  # not seekable: Pillow will say so
        return False
    return isinstance(head, bytes) and looks_like_dicom(head)


def _check_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise InputError(name, f"image has no pixels ({width}x{height})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise InputError(
            name,
            f"image is {width}x{height} pixels, over the {limit:,}-pixel safety limit "
            "(PIL.Image.MAX_IMAGE_PIXELS)",
        )


def _image_to_gray(image: Image.Image, name: str) -> Image.Image:
    _check_size(image.width, image.height, name)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode == "L":
            return image
        if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            return _array_to_gray(np.asarray(image), name)
        return image.convert("L")
    except InputError:
        raise
    except _DECODE_ERRORS as error:
        raise InputError(name, f"cannot decode image ({error})") from error


def _array_to_gray(array: np.ndarray, name: str) -> Image.Image:
    if array.size == 0:
        raise InputError(name, f"array is empty (shape {array.shape})")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise InputError(name, f"array shape {array.shape} is not (H, W), (H, W, 1) or (H, W, 3)")
    _check_size(array.shape[1], array.shape[0], name)
    pixels = _to_uint8(array, name)
    if pixels.ndim == 3:
        return Image.fromarray(pixels).convert("L")
    return Image.fromarray(pixels)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Map uint8 as is, 16-bit and other non-negative integers by bit depth, floats from [0, 1]."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "ui":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InputError(name, f"integer pixel values must lie in [0, 65535], got [{low}, {high}]")
        bits = max(8, math.ceil(math.log2(high + 1)))
        # a lookup table: no float copy of the image (8 bytes a pixel on a 16-bit bomb)
        table = np.rint(np.arange(high + 1) * (255.0 / (2**bits - 1))).astype(np.uint8)
        return table[array]
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(name, "array holds NaN or infinite values")
        lowest, highest = float(array.min()), float(array.max())
        if lowest < 0.0 or highest > 1.0:
            raise InputError(name, f"float pixel values must lie in [0, 1], got [{lowest:g}, {highest:g}]")
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise InputError(name, f"unsupported array dtype {array.dtype}; use uint8, uint16 or float")
