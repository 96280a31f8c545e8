"""pneumocnn.core.preprocessing on real X-rays and on image files of every kind written here."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_DATA, FULL_TRAIN, XRAYS, full_resolution_files
from PIL import Image, JpegImagePlugin, PngImagePlugin

from pneumocnn.core.errors import InputError
from pneumocnn.core.preprocessing import (
    Preprocessing,
    crop_margins,
    load_pixels,
    preprocess,
    source_name,
    to_model_input,
)

TRAIN = XRAYS  # the 224 px training X-rays shipped in tests/data
# full-size originals and the folder holding their 224 px copies: the 3 shipped in tests/data,
# and the 46 of the whole data set (tests marked full_data)
FULL_RESOLUTION_SETS = {
    "shipped": (full_resolution_files(), XRAYS, 3),
    "full": (sorted((FULL_DATA / "full_resolution").glob("*/*.jpeg")), FULL_TRAIN, 46),
}

SPEC = Preprocessing()  # 150 x 150 x 3, bilinear
ORIENTATION = 0x0112


def real_xray(label: str, index: int = 0) -> Path:
    """One real 224x224 training X-ray (an RGB JPEG with equal channels)."""
    return sorted((TRAIN / label).glob("*.jpeg"))[index]


def gray_of(path: Path) -> np.ndarray:
    """The full 8-bit grayscale decode of a file, without pneumocnn."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def expected_pixels(gray: np.ndarray, spec: Preprocessing = SPEC) -> np.ndarray:
    """What step 2 must give for an 8-bit grayscale image: a bilinear resize to the input."""
    resized = Image.fromarray(gray).resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


@pytest.fixture(scope="module", params=["NORMAL", "PNEUMONIA"])
def xray(request) -> Path:
    return real_xray(request.param, 9)  # bright enough for the washed-out exposure test


@pytest.fixture(scope="module")
def gray(xray) -> np.ndarray:
    return gray_of(xray)


@pytest.fixture(scope="module")
def reference(xray) -> np.ndarray:
    return load_pixels(xray, SPEC)


# ---------------------------------------------------------------------------------------------
# every input kind gives the same pixels


def test_reference_is_a_bilinear_resize_of_the_grayscale_image(xray, gray, reference):
    assert reference.dtype == np.uint8
    assert reference.shape == (SPEC.height, SPEC.width)
    assert reference.std() > 0  # a real picture, not a blank
    np.testing.assert_array_equal(reference, expected_pixels(gray))


INPUT_KINDS = {
    "str": lambda path, gray: str(path),
    "Path": lambda path, gray: path,
    "bytes": lambda path, gray: path.read_bytes(),
    "bytearray": lambda path, gray: bytearray(path.read_bytes()),
    "memoryview": lambda path, gray: memoryview(path.read_bytes()),
    "BytesIO": lambda path, gray: io.BytesIO(path.read_bytes()),
    "PIL RGB (lazy, from file)": lambda path, gray: Image.open(path),
    "PIL L": lambda path, gray: Image.fromarray(gray),
    "uint8 HxW": lambda path, gray: gray,
    "uint8 HxWx1": lambda path, gray: gray[..., np.newaxis],
    "uint8 HxWx3": lambda path, gray: np.repeat(gray[..., np.newaxis], 3, axis=-1),
    "uint8 HxW non-contiguous": lambda path, gray: np.asfortranarray(gray),
    "uint16 HxW (x257)": lambda path, gray: gray.astype(np.uint16) * 257,
    "uint16 HxWx3 (x257)": lambda path, gray: np.repeat(gray[..., None], 3, -1).astype(np.uint16)
    * 257,
    "int64 HxW in [0, 255]": lambda path, gray: gray.astype(np.int64),
    "float64 in [0, 1]": lambda path, gray: gray / 255.0,
    "float32 in [0, 1]": lambda path, gray: (gray / 255.0).astype(np.float32),
    "float32 HxWx3 in [0, 1]": lambda path, gray: np.repeat(gray[..., None] / 255.0, 3, -1).astype(
        np.float32
    ),
}


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_every_input_kind_gives_the_same_pixels(kind, xray, gray, reference):
    source = INPUT_KINDS[kind](xray, gray)
    np.testing.assert_array_equal(load_pixels(source, SPEC), reference)


def test_open_binary_file_gives_the_same_pixels(xray, reference):
    with xray.open("rb") as stream:
        pixels = load_pixels(stream, SPEC)
    np.testing.assert_array_equal(pixels, reference)


def test_input_arrays_are_not_modified(gray):
    source = gray.astype(np.uint16) * 257
    before = source.copy()
    load_pixels(source, SPEC)
    np.testing.assert_array_equal(source, before)


@pytest.mark.parametrize("stored_as", ["file", "PIL image"])
def test_16_bit_grayscale_png(tmp_path, gray, reference, stored_as):
    path = save(Image.fromarray(gray.astype(np.uint16) * 257), tmp_path / "sixteen.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert np.asarray(image).max() > 255  # really 16-bit values
        image.load()
        source = path if stored_as == "file" else image.copy()
    np.testing.assert_array_equal(load_pixels(source, SPEC), reference)


# ---------------------------------------------------------------------------------------------
# image modes and formats


def test_palette_png_with_gray_palette_is_exact(tmp_path, gray, reference):
    path = save(Image.fromarray(gray).convert("P"), tmp_path / "palette.png")
    with Image.open(path) as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(load_pixels(path, SPEC), reference)


def test_adaptive_palette_png(tmp_path, gray, reference):
    rgb = Image.fromarray(gray).convert("RGB")
    path = save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), tmp_path / "p.png")
    with Image.open(path) as image:
        assert image.mode == "P"
    assert mean_abs_diff(load_pixels(path, SPEC), reference) < 2.0


def test_palette_png_with_transparency(tmp_path, gray, reference):
    palette_image = Image.fromarray(gray).convert("P")
    path = save(palette_image, tmp_path / "transparent.png", transparency=0)
    with Image.open(path) as image:
        assert image.mode == "P" and "transparency" in image.info
    pixels = load_pixels(path, SPEC)
    assert pixels.shape == (SPEC.height, SPEC.width)
    assert mean_abs_diff(pixels, reference) < 1.0


def test_rgba_png_ignores_alpha(tmp_path, gray, reference):
    alpha = np.tile(np.linspace(0, 255, gray.shape[1]).astype(np.uint8), (gray.shape[0], 1))
    rgba = np.dstack([gray, gray, gray, alpha])
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    with Image.open(path) as image:
        assert image.mode == "RGBA"
    np.testing.assert_array_equal(load_pixels(path, SPEC), reference)


def test_la_png_ignores_alpha(tmp_path, gray, reference):
    alpha = np.full_like(gray, 128)
    path = save(Image.fromarray(np.dstack([gray, alpha]), "LA"), tmp_path / "la.png")
    with Image.open(path) as image:
        assert image.mode == "LA"
    np.testing.assert_array_equal(load_pixels(path, SPEC), reference)


def test_cmyk_jpeg(tmp_path, gray, reference):
    path = save(Image.fromarray(gray).convert("CMYK"), tmp_path / "cmyk.jpeg", quality=95)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    assert mean_abs_diff(load_pixels(path, SPEC), reference) < 2.0


def test_one_bit_png(tmp_path, gray):
    binary = gray > 127
    path = save(Image.fromarray(binary), tmp_path / "bits.png")
    with Image.open(path) as image:
        assert image.mode == "1"
    expected = expected_pixels(binary.astype(np.uint8) * 255)
    np.testing.assert_array_equal(load_pixels(path, SPEC), expected)


def test_progressive_jpeg(tmp_path, gray, reference):
    baseline = save(Image.fromarray(gray), tmp_path / "baseline.jpeg", quality=95)
    progressive = save(
        Image.fromarray(gray), tmp_path / "progressive.jpeg", quality=95, progressive=True
    )
    with Image.open(progressive) as image:
        assert image.info.get("progressive") or image.info.get("progression")
    pixels = load_pixels(progressive, SPEC)
    assert mean_abs_diff(pixels, load_pixels(baseline, SPEC)) < 0.5
    assert mean_abs_diff(pixels, reference) < 2.0


def test_multi_frame_gif_uses_the_first_frame(tmp_path, gray, reference):
    first, second = Image.fromarray(gray), Image.fromarray(255 - gray)
    path = tmp_path / "frames.gif"
    first.save(path, save_all=True, append_images=[second])
    with Image.open(path) as image:
        assert getattr(image, "n_frames", 1) == 2
    pixels = load_pixels(path, SPEC)
    assert mean_abs_diff(pixels, reference) < 1.0
    assert mean_abs_diff(pixels, expected_pixels(255 - gray)) > 20.0


# ---------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.fixture(scope="module")
def upright(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A non-square real X-ray saved upright, and its pixels."""
    crop = Image.fromarray(gray_of(real_xray("PNEUMONIA", 7))).crop((0, 0, 224, 150))
    path = save(crop, tmp_path_factory.mktemp("exif") / "upright.jpeg", quality=95)
    return path, load_pixels(path, SPEC)


# stored = upright.transpose(how); EXIF tag says how to turn it back
ORIENTATIONS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("as_input", ["path", "bytes", "PIL image"])
def test_exif_orientation_is_applied(tmp_path, upright, orientation, as_input):
    upright_path, upright_pixels = upright
    with Image.open(upright_path) as image:
        stored = image.transpose(ORIENTATIONS[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    tagged = save(stored, tmp_path / "tagged.jpeg", quality=95, exif=exif)
    untagged = save(stored, tmp_path / "untagged.jpeg", quality=95)
    with Image.open(tagged) as image:
        assert image.getexif()[ORIENTATION] == orientation
        source = {"path": tagged, "bytes": tagged.read_bytes(), "PIL image": image}[as_input]
        pixels = load_pixels(source, SPEC)
    assert mean_abs_diff(pixels, upright_pixels) < 2.0
    # the rotation matters: ignoring the tag gives a very different picture
    assert mean_abs_diff(load_pixels(untagged, SPEC), upright_pixels) > 10.0


# ---------------------------------------------------------------------------------------------
# full-resolution clinic images: reduced-scale JPEG decoding


@pytest.fixture(params=["shipped", pytest.param("full", marks=pytest.mark.full_data)])
def full_resolution(request) -> tuple[list[Path], Path, int]:
    return FULL_RESOLUTION_SETS[request.param]


def test_full_resolution_files_are_present(full_resolution):
    files, _, count = full_resolution
    assert len(files) == count
    modes = set()
    for path in files:
        with Image.open(path) as image:
            modes.add(image.mode)
    assert modes == {"L", "RGB"}  # grayscale and RGB originals


@pytest.mark.parametrize("spec", [SPEC, Preprocessing(224, 224, 1)], ids=["150", "224"])
def test_full_resolution_draft_decode_matches_full_decode(spec, monkeypatch, full_resolution):
    drafted: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original_draft(self, mode, size)
        drafted.append((before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    worst = 0.0
    for path in full_resolution[0]:
        drafted.clear()
        pixels = load_pixels(path, spec)
        assert pixels.shape == (spec.height, spec.width) and pixels.dtype == np.uint8
        (before, after), = drafted
        # decoded at a reduced scale, but never below twice the model input
        side = 2 * max(spec.height, spec.width)
        assert min(after) >= min(min(before), side), path.name
        if min(before) >= 16 * max(spec.height, spec.width):
            assert after[0] < before[0], path.name
        worst = max(worst, mean_abs_diff(pixels, expected_pixels(gray_of(path), spec)))
    assert worst < 2.0


def test_full_resolution_matches_the_resized_training_copy(full_resolution):
    """The same image at full size and as the 224x224 copy gives nearly the same input."""
    files, train, _ = full_resolution
    for path in files:
        copy = train / path.parent.name / path.name
        assert mean_abs_diff(load_pixels(path, SPEC), load_pixels(copy, SPEC)) < 3.0, path.name


# ---------------------------------------------------------------------------------------------
# the model input


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(150, 150), (120, 160), (64, 48)])
def test_preprocess_output(xray, gray, channels, size):
    spec = Preprocessing(height=size[0], width=size[1], channels=channels)
    result = preprocess(xray, spec)
    assert result.dtype == np.float32
    assert result.shape == (size[0], size[1], channels) == spec.input_shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    pixels = load_pixels(xray, spec)
    for channel in range(channels):
        np.testing.assert_allclose(result[..., channel], pixels / 255.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result, to_model_input(pixels, spec))
    # small inputs may decode the JPEG at a reduced scale: close to a full decode, not equal
    assert mean_abs_diff(pixels, expected_pixels(gray, spec)) < 2.0


def test_preprocess_bicubic(xray, gray):
    spec = Preprocessing(resize="bicubic")
    expected = Image.fromarray(gray).resize((150, 150), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(load_pixels(xray, spec), np.asarray(expected))


def test_preprocessing_round_trips_through_its_dictionary():
    spec = Preprocessing(height=120, width=160, channels=1, resize="bicubic", normalize="equalize")
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        Preprocessing(channels=2)
    with pytest.raises(ValueError, match="normalize must be one of"):
        Preprocessing(normalize="clahe")


def test_description_without_normalize_means_none():
    """Model files written before intensity normalisation existed keep their meaning."""
    older = {k: v for k, v in Preprocessing().to_dict().items() if k != "normalize"}
    assert Preprocessing.from_dict(older).normalize == "none"


def test_description_without_crop_means_none_and_none_is_not_written():
    """Model files without a crop keep their meaning, and stay readable by pneumocnn 0.1."""
    assert "crop" not in Preprocessing().to_dict()
    assert Preprocessing.from_dict(Preprocessing().to_dict()).crop == "none"
    spec = Preprocessing(crop="margins", normalize="equalize")
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="crop must be one of"):
        Preprocessing(crop="lungs")


def _framed(gray: np.ndarray, fraction: float, level: int) -> np.ndarray:
    """The X-ray shrunk inside a band of ``level`` (0 black, 255 white) of ``fraction`` of its
    size each side: a wider field of view, padding or collimation."""
    h, w = gray.shape
    dy, dx = round(h * fraction), round(w * fraction)
    framed = np.full_like(gray, level)
    framed[dy:h - dy, dx:w - dx] = np.asarray(Image.fromarray(gray).resize((w - 2 * dx, h - 2 * dy)))
    return framed


@pytest.mark.parametrize("fraction, level", [(0.05, 0), (0.09, 0), (0.08, 255), (0.09, 3)])
def test_margin_crop_makes_framings_alike(gray, fraction, level):
    spec = Preprocessing(normalize="equalize", crop="margins")
    framed = _framed(gray, fraction, level)
    assert mean_abs_diff(load_pixels(gray, Preprocessing(normalize="equalize")),
                         load_pixels(framed, Preprocessing(normalize="equalize"))) > 20
    assert mean_abs_diff(load_pixels(gray, spec), load_pixels(framed, spec)) < 4


def test_margin_crop_keeps_an_x_ray_without_margins_and_a_blank_image(gray):
    image = Image.fromarray(gray)
    cropped = crop_margins(image)
    assert cropped.size[0] >= 0.9 * image.size[0] and cropped.size[1] >= 0.9 * image.size[1]
    blank = Image.new("L", (64, 48), 0)
    assert crop_margins(blank).size == (64, 48)


def test_margin_crop_applies_to_files_as_to_pixels(tmp_path, gray):
    path = tmp_path / "framed.png"
    Image.fromarray(_framed(gray, 0.1, 0)).save(path)
    spec = Preprocessing(crop="margins")
    assert np.array_equal(load_pixels(path, spec), load_pixels(_framed(gray, 0.1, 0), spec))


def _washed_out(gray: np.ndarray) -> np.ndarray:
    """The same X-ray as a flat, bright exposure from another machine: 120-220 of 0-255."""
    return (120 + gray.astype(np.float64) * 100 / 255).round().astype(np.uint8)


@pytest.mark.parametrize("normalize", ["equalize", "autocontrast"])
def test_intensity_normalisation_makes_exposures_alike(xray, gray, normalize):
    spec = Preprocessing(normalize=normalize)
    plain = load_pixels(gray, Preprocessing())
    washed = load_pixels(_washed_out(gray), Preprocessing())
    assert mean_abs_diff(plain, washed) > 40
    normalized, normalized_washed = load_pixels(gray, spec), load_pixels(_washed_out(gray), spec)
    assert normalized.min() <= 3 and normalized.max() >= 252  # stretched over the full range
    assert mean_abs_diff(normalized, normalized_washed) < 6
    assert np.array_equal(load_pixels(xray, spec), normalized)  # the file and its pixels agree


def test_equalize_flattens_the_histogram(gray):
    pixels = load_pixels(gray, Preprocessing(normalize="equalize"))
    quartiles = np.percentile(pixels, [25, 50, 75])
    np.testing.assert_allclose(quartiles, [64, 128, 191], atol=16)


# ---------------------------------------------------------------------------------------------
# unusable files: InputError naming the file


def _random_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()


BAD_FILES = {
    "empty.jpeg": b"",
    "random.jpeg": _random_bytes(),
    "page.jpeg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    "notes.jpeg": "Patient notes: \u00e9\u00e8 no image here\n".encode(),
    "jpeg-magic-only.jpeg": b"\xff\xd8\xff",
    "png-signature-only.png": b"\x89PNG\r\n\x1a\n",
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_unusable_file_raises_input_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(InputError) as caught:
        load_pixels(path, SPEC)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(InputError, match=f"<{len(BAD_FILES[name])} bytes>"):
        load_pixels(BAD_FILES[name], SPEC)


@pytest.mark.parametrize("fraction", [0.0005, 0.003, 0.01, 0.05, 0.25, 0.5, 0.9, 0.995])
def test_truncated_jpeg_is_refused_or_decoded(tmp_path, fraction):
    data = real_xray("NORMAL", 5).read_bytes()
    cut = max(1, int(len(data) * fraction))
    path = tmp_path / "truncated.jpeg"
    path.write_bytes(data[:cut])
    for source in (path, data[:cut]):
        try:
            pixels = load_pixels(source, SPEC)
        except InputError as error:
            assert error.source == source_name(source)
        else:
            assert pixels.shape == (SPEC.height, SPEC.width) and pixels.dtype == np.uint8


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "missing.jpeg"
    with pytest.raises(InputError, match="missing.jpeg") as caught:
        load_pixels(path, SPEC)
    assert caught.value.source == str(path)
    with pytest.raises(InputError, match="missing.jpeg"):
        preprocess(str(path), SPEC)


def test_folder(tmp_path):
    with pytest.raises(InputError, match="folder") as caught:
        load_pixels(tmp_path, SPEC)
    assert caught.value.source == str(tmp_path)


def _no_decoding(monkeypatch) -> list:
    """Record every PNG pixel decode."""
    loads: list = []
    original = PngImagePlugin.PngImageFile.load

    def spy(self):
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", spy)
    return loads


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bomb_is_refused_by_pixel_count(tmp_path, monkeypatch, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)
    assert path.stat().st_size < 200_000  # a small file ...
    loads = _no_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for source in (path, path.read_bytes()):
            with pytest.raises(InputError, match="pixel") as caught:
                load_pixels(source, SPEC)
            assert caught.value.source == source_name(source)
            assert "limit" in caught.value.reason
    assert loads == []  # ... refused before its pixels were decoded


# ---------------------------------------------------------------------------------------------
# unusable arrays and objects


def _float_with(value: float) -> np.ndarray:
    array = np.full((8, 8), 0.5)
    array[3, 4] = value
    return array


BAD_ARRAYS = {
    "empty": np.zeros((0, 0), np.uint8),
    "empty rows": np.zeros((0, 16), np.uint8),
    "empty HxWx3": np.zeros((16, 0, 3), np.uint8),
    "1-D": np.zeros(16, np.uint8),
    "4-D": np.zeros((1, 16, 16, 3), np.uint8),
    "2 channels": np.zeros((16, 16, 2), np.uint8),
    "4 channels": np.zeros((16, 16, 4), np.uint8),
    "channels first": np.zeros((3, 16, 16), np.uint8),
    "NaN": _float_with(np.nan),
    "inf": _float_with(np.inf),
    "-inf": _float_with(-np.inf),
    "negative float": _float_with(-0.01),
    "float above 1": _float_with(1.01),
    "float 0..255": np.full((8, 8), 128.0),
    "int64 negative": np.full((8, 8), -1, np.int64),
    "int32 above 16 bits": np.full((8, 8), 70_000, np.int32),
    "bool": np.ones((8, 8), bool),
    "complex": np.ones((8, 8), complex),
    "object": np.full((8, 8), None, object),
    "strings": np.full((8, 8), "a"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_unusable_array_raises_input_error_naming_it(case):
    array = BAD_ARRAYS[case]
    with pytest.raises(InputError) as caught:
        load_pixels(array, SPEC)
    assert caught.value.source == source_name(array)
    assert str(caught.value).startswith(f"<array {array.dtype} {array.shape}>")
    with pytest.raises(InputError, match=r"^scan 7: "):
        preprocess(array, SPEC, name="scan 7")


def test_empty_pil_image():
    with pytest.raises(InputError, match="no pixels"):
        load_pixels(Image.new("L", (0, 0)), SPEC)


@pytest.mark.parametrize(
    "source", [None, 42, 3.5, [[0, 255], [255, 0]], {"pixels": 1}, object()], ids=repr
)
def test_unsupported_object_type(source):
    with pytest.raises(InputError, match="unsupported input type") as caught:
        load_pixels(source, SPEC)
    assert caught.value.source == source_name(source) == f"<{type(source).__name__}>"


def test_text_mode_file_is_refused(xray):
    with xray.open("r") as stream, pytest.raises(InputError) as caught:
        load_pixels(stream, SPEC)
    assert caught.value.source == str(xray)
