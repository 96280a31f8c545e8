"""pneumocnn.core.dicom: DICOM files shown to the model as a viewer shows them, in every common
transfer syntax and without preamble or file meta; refused clearly, in one line and without
pydicom's log, when they cannot be read; held back by the input guard when their tags say they
are not a frontal chest X-ray."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import TINY_INT8, real_images
from PIL import Image

import pneumocnn
from pneumocnn.core.guard import PREFIX

pydicom = pytest.importorskip("pydicom")

from dicomfiles import (  # noqa: E402  (needs pydicom)
    HAVE_PYJPEGLS,
    compressed,
    cut_codestream,
    dx_dataset,
    uncompressed,
    write_bare,
    write_dicom,
)
from pydicom import uid  # noqa: E402

from pneumocnn.core.preprocessing import load_gray  # noqa: E402


@pytest.fixture(scope="module")
def xray():
    path = real_images("PNEUMONIA", 1, start=7)[0]
    with Image.open(path) as image:
        return path, np.asarray(image.convert("L"))


@pytest.fixture(scope="module")
def model():
    return pneumocnn.load(TINY_INT8)


def stored_values(gray: np.ndarray, bits: int) -> np.ndarray:
    """8-bit pixels spread over ``bits`` (shown again, the full stored range gives them back)."""
    return np.rint(gray * ((2**bits - 1) / 255)).astype(np.uint8 if bits <= 8 else np.uint16)


def shown(path) -> np.ndarray:
    return np.asarray(load_gray(path), dtype=np.int64)


def test_dicom_made_from_a_jpeg_gives_the_jpeg_answer(xray, model, tmp_path):
    path, gray = xray
    expected = model.predict(gray).probability
    variants = {
        "8bit.dcm": dict(pixels=gray),
        "12bit.dcm": dict(pixels=np.rint(gray * (4095 / 255)), bits_stored=12),
        "mono1.dcm": dict(pixels=255 - gray.astype(int), monochrome1=True),
        "window.dcm": dict(pixels=gray.astype(int) * 16 + 1000, bits_stored=16,
                           window=(1000 + 127.5 * 16 + 7.5, 256 * 16)),
    }
    for name, spec in variants.items():
        write_dicom(tmp_path / name, **spec)
        assert model.predict(tmp_path / name).probability == pytest.approx(expected, abs=0.02), name
    no_suffix = tmp_path / "IM0001"
    shutil.copy(tmp_path / "8bit.dcm", no_suffix)
    assert model.predict(no_suffix.read_bytes()).probability == pytest.approx(expected, abs=0.02)


def test_dicom_window_is_applied(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, window=(2048, 1024))
    view = shown(tmp_path / "w.dcm")
    assert view[0, 0] == 0 and view[0, -1] == 255  # outside the window: clipped
    middle = view[0, 128]  # stored 2048, the window centre
    assert 120 <= middle <= 135


@pytest.mark.parametrize("monochrome1", [False, True])
def test_a_large_image_is_shown_band_by_band_as_a_whole(xray, tmp_path, monochrome1):
    """A 16-bit X-ray of 2,000 x 1,400 pixels (three bands of the display transform) with a
    rescale and a window shows exactly what the transform computed on the whole image gives;
    of a two-frame file, only the first frame is shown."""
    gray = np.asarray(Image.fromarray(xray[1]).resize((1400, 2000), Image.Resampling.BILINEAR))
    stored = gray.astype(np.uint16) * 16 + 100
    centre, width, slope, intercept = 2100.0, 3000.0, 2.0, -1024.0
    values = stored * slope + intercept
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    expected = np.rint((1.0 - scaled if monochrome1 else scaled) * 255.0).astype(np.uint8)
    dataset = dx_dataset(stored, 16, monochrome1=monochrome1, window=(centre, width),
                         RescaleSlope=slope, RescaleIntercept=intercept)
    dataset.NumberOfFrames = 2
    dataset.PixelData = stored.tobytes() + (65535 - stored).tobytes()
    dataset.save_as(tmp_path / "large.dcm", enforce_file_format=True)
    assert np.array_equal(np.asarray(load_gray(tmp_path / "large.dcm")), expected)


# ---------------------------------------------------------------------------------------------
# transfer syntaxes: a real X-ray compressed in each, decoded by the `dicom` extra's decoders

LOSSLESS = (0, 0.0)  # largest and mean difference of the shown 8-bit pixels
COMPRESSIONS = [  # (transfer syntax, bits stored, loss allowed)
    (uid.JPEGBaseline8Bit, 8, (16, 0.5)),  # quality 95
    (uid.JPEGExtended12Bit, 8, (16, 0.5)),
    (uid.JPEGLossless, 12, LOSSLESS),
    (uid.JPEGLosslessSV1, 8, LOSSLESS),
    (uid.JPEGLosslessSV1, 12, LOSSLESS),
    (uid.JPEGLosslessSV1, 16, LOSSLESS),
    (uid.JPEGLSLossless, 8, LOSSLESS),
    (uid.JPEGLSLossless, 12, LOSSLESS),
    (uid.JPEGLSNearLossless, 8, (2, 2.0)),  # NEAR = 2: no stored value moves by more
    (uid.JPEGLSNearLossless, 12, (1, 0.5)),
    (uid.JPEG2000Lossless, 8, LOSSLESS),
    (uid.JPEG2000Lossless, 16, LOSSLESS),
    (uid.JPEG2000, 8, (16, 1.5)),  # compression ratio 10
    (uid.JPEG2000, 12, (16, 1.5)),
    (uid.RLELossless, 8, LOSSLESS),
    (uid.RLELossless, 16, LOSSLESS),
]


@pytest.mark.parametrize("syntax, bits, loss", COMPRESSIONS,
                         ids=[f"{s.keyword}-{b}bit" for s, b, _ in COMPRESSIONS])
def test_compressed_xray_decodes_to_its_pixels(xray, tmp_path, syntax, bits, loss):
    if syntax.keyword.startswith("JPEGLS") and not HAVE_PYJPEGLS:
        pytest.skip("writing JPEG-LS needs pyjpegls (no wheel for this Python); reading it is "
                    "tested on pydicom's own JPEG-LS file")
    gray = xray[1]
    path = tmp_path / "study.dcm"
    compressed(dx_dataset(stored_values(gray, bits), bits), syntax).save_as(
        path, enforce_file_format=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    difference = np.abs(shown(path) - gray)
    largest, mean = loss
    assert difference.max() <= largest and difference.mean() <= mean, (
        difference.max(), difference.mean())


@pytest.mark.parametrize("syntax", [uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian,
                                    uid.DeflatedExplicitVRLittleEndian], ids=lambda s: s.keyword)
def test_uncompressed_encodings_are_read(xray, tmp_path, syntax):
    gray = xray[1]
    path = tmp_path / "study.dcm"
    uncompressed(dx_dataset(stored_values(gray, 12), 12), syntax).save_as(
        path, enforce_file_format=True)
    assert np.array_equal(shown(path), gray)


def test_files_of_other_encoders_show_one_image_alike():
    """pydicom's test files: one MR image as other software wrote it (RLE, JPEG-LS, JPEG 2000,
    big endian, implicit VR, deflated...) shows the same pixels (read without the guard: MR)."""
    from pydicom.data import get_testdata_file

    reference = shown(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"):
        assert np.array_equal(shown(get_testdata_file(name)), reference), name
    extended = shown(get_testdata_file("JPGExtended.dcm"))  # 12-bit JPEG extended (process 4)
    assert extended.shape == (1024, 256) and len(np.unique(extended)) > 10  # 0-264 of 4095


# ---------------------------------------------------------------------------------------------
# files without preamble, without file meta, or with meta that names no transfer syntax


@pytest.mark.parametrize("syntax", [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian,
                                    uid.ExplicitVRBigEndian], ids=lambda s: s.keyword)
def test_files_without_preamble_or_meta_are_read(xray, model, tmp_path, syntax):
    """Old ACR-NEMA style: the data set alone. Found in a folder with or without the .dcm
    suffix, and given as bytes."""
    gray = xray[1]
    expected = model.predict(gray).probability
    scans = tmp_path / "scans"
    scans.mkdir()
    bare = write_bare(scans / "IM0001", uncompressed(dx_dataset(stored_values(gray, 12), 12), syntax))
    assert bare.read_bytes()[128:132] != b"DICM"
    shutil.copy(bare, scans / "old.dcm")
    results = model.predict(scans)
    assert [r.source for r in results] == [str(scans / "IM0001"), str(scans / "old.dcm")]
    assert all(r.probability == pytest.approx(expected, abs=1e-6) for r in results), results
    assert np.array_equal(shown(bare.read_bytes()), gray)


@pytest.mark.parametrize("syntax", [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian],
                         ids=lambda s: s.keyword)
def test_meta_without_transfer_syntax_is_read_in_the_data_sets_encoding(xray, tmp_path, syntax):
    gray = xray[1]
    path = tmp_path / "study.dcm"
    dataset = uncompressed(dx_dataset(stored_values(gray, 12), 12), syntax)
    dataset.save_as(path, enforce_file_format=True)
    dataset = pydicom.dcmread(path)
    del dataset.file_meta.TransferSyntaxUID
    pydicom.dcmwrite(path, dataset, implicit_vr=syntax.is_implicit_VR, little_endian=True)
    assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    assert np.array_equal(shown(path), gray)


# ---------------------------------------------------------------------------------------------
# refusals: one line each, and what pydicom logs while pneumocnn reads stays out of the log


def damaged_files(folder, gray) -> dict[str, str]:
    """DICOM files that cannot be shown, each with a phrase its error must hold."""
    folder.mkdir(exist_ok=True)
    dataset = compressed(dx_dataset(gray), uid.JPEG2000Lossless)
    frame = bytearray(next(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1)))
    frame[200:2000] = bytes(1800)  # the codestream zeroed after its headers, cut short, and
    ends = b"\xff\xd9"  # given its end marker back: the decoder fails on it
    dataset.PixelData = pydicom.encaps.encapsulate([bytes(frame[: len(frame) // 3]) + ends])
    dataset.save_as(folder / "corrupt-j2k.dcm", enforce_file_format=True)
    whole = write_dicom(folder / "whole.dcm", gray).read_bytes()
    (folder / "cut.dcm").write_bytes(whole[: len(whole) // 2])  # half the pixel data
    frames = b"\x28\x00\x08\x00IS\x02\x00"  # NumberOfFrames, made "1A": not a number
    write_dicom(folder / "whole.dcm", gray, NumberOfFrames=11)
    (folder / "bad-value.dcm").write_bytes(
        (folder / "whole.dcm").read_bytes().replace(frames + b"11", frames + b"1A"))
    (folder / "whole.dcm").unlink()
    for syntax, file in ((uid.JPEGBaseline8Bit, "cut-jpeg.dcm"), (uid.JPEGLosslessSV1, "cut-lossless.dcm")):
        cut_codestream(compressed(dx_dataset(gray), syntax), 0.1).save_as(
            folder / file, enforce_file_format=True)
    cut_short = "pixel data is cut short: the JPEG"
    return {"corrupt-j2k.dcm": "pylibjpeg: ", "cut.dcm": "cannot decode DICOM pixel data",
            "bad-value.dcm": "cannot decode DICOM pixel data", "cut-jpeg.dcm": cut_short,
            "cut-lossless.dcm": cut_short}


def test_a_cut_jpeg_codestream_is_refused_though_libjpeg_decodes_it(xray, tmp_path):
    """libjpeg fills the rows a cut JPEG frame lacks without a word (pydicom's pylibjpeg
    plugin returns a whole-looking image): the missing end-of-image marker refuses it."""
    dataset = cut_codestream(compressed(dx_dataset(xray[1]), uid.JPEGBaseline8Bit), 0.1)
    assert pydicom.pixels.pixel_array(dataset, decoding_plugin="pylibjpeg").shape == xray[1].shape
    dataset.save_as(tmp_path / "cut.dcm", enforce_file_format=True)
    with pytest.raises(pneumocnn.InputError, match=r"cut.dcm: pixel data is cut short"):
        load_gray(tmp_path / "cut.dcm")
    whole = compressed(dx_dataset(xray[1]), uid.JPEGBaseline8Bit)
    whole.PixelData = pydicom.encaps.encapsulate(  # a fragment padded to even length is whole
        [next(pydicom.encaps.generate_frames(whole.PixelData, number_of_frames=1)) + b"\0"])
    whole.save_as(tmp_path / "padded.dcm", enforce_file_format=True)
    assert np.asarray(load_gray(tmp_path / "padded.dcm")).shape == xray[1].shape


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS:UserWarning")  # pydicom's, as is
def test_damaged_files_are_refused_in_one_line_without_library_logs(xray, model, tmp_path, caplog):
    expected = damaged_files(tmp_path / "damaged", xray[1])
    with caplog.at_level(logging.DEBUG):
        results = model.predict(tmp_path / "damaged")
    assert {r.source.rsplit("/", 1)[-1] for r in results} == set(expected)
    for result in results:
        assert result.label is None and "\n" not in result.error, result.error
        assert expected[result.source.rsplit("/", 1)[-1]] in result.error, result.error
    library = [r for r in caplog.records if r.levelno >= logging.WARNING
               and r.name.split(".")[0] in ("pydicom", "pylibjpeg", "openjpeg")]
    assert not library, [r.getMessage() for r in library]
    logging.getLogger("pydicom").warning("said outside a read")  # pydicom's log is not muted
    assert caplog.records[-1].getMessage() == "said outside a read"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on each damaged value
def test_mutated_dicom_bytes_give_an_image_or_an_input_error(xray):
    """A valid compressed file and a file without preamble, with bytes changed or cut off, and
    random bytes that start like a data set: pydicom raises errors of many kinds on them
    (struct.error, NotImplementedError, its own); each must come out as an InputError."""
    gray = xray[1]
    buffer = io.BytesIO()
    compressed(dx_dataset(gray), uid.RLELossless).save_as(buffer, enforce_file_format=True)
    rng = np.random.default_rng(7)
    bare = io.BytesIO()
    dataset = uncompressed(dx_dataset(gray), uid.ImplicitVRLittleEndian)
    del dataset.file_meta
    pydicom.dcmwrite(bare, dataset, implicit_vr=True, little_endian=True)
    outcomes = []
    for index in range(300):
        if index % 3 == 0:
            data = b"\x08\x00" + rng.integers(0, 256, int(rng.integers(0, 400)), np.uint8).tobytes()
        else:
            data = bytearray((buffer if index % 3 == 1 else bare).getvalue())
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, 2000))] = int(rng.integers(0, 256))
            data = bytes(data[: int(rng.integers(10, len(data)))] if index % 2 else data)
        try:
            load_gray(data)
            outcomes.append("image")
        except pneumocnn.InputError:
            outcomes.append("refused")
    assert outcomes.count("refused") > 100 and "image" in outcomes


def test_a_missing_decoder_names_the_extra(xray, tmp_path):
    """Without the pylibjpeg decoders (blocked here), JPEG lossless cannot be decoded and the
    error says what to install; without pydicom, neither can any DICOM file."""
    gray = xray[1]
    compressed(dx_dataset(gray), uid.JPEGLosslessSV1).save_as(tmp_path / "ll.dcm",
                                                               enforce_file_format=True)
    write_dicom(tmp_path / "study.dcm", gray)
    code = textwrap.dedent(f"""
        import sys
        blocked = sys.argv[1].split(",")
        for name in blocked:
            sys.modules[name] = None
        import pneumocnn
        model = pneumocnn.load({str(TINY_INT8)!r})
        try:
            model.predict(sys.argv[2])
        except pneumocnn.PneumocnnError as error:
            print("refused:", error)
        print(model.predict([sys.argv[2]])[0].error)
    """)
    decoders = "pylibjpeg,libjpeg,openjpeg,rle,jpeg_ls,gdcm"
    for blocked, path in ((decoders, tmp_path / "ll.dcm"), ("pydicom", tmp_path / "study.dcm")):
        result = subprocess.run([sys.executable, "-c", code, blocked, str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("pip install 'pneumocnn[dicom]'") == 2, result.stdout


# ---------------------------------------------------------------------------------------------
# the input guard, through predict


def test_guard_holds_back_what_the_tags_say_is_not_a_frontal_chest(xray, model, tmp_path):
    gray = xray[1]
    studies = {
        "pa.dcm": dict(BodyPartExamined="CHEST", ViewPosition="PA"),
        "untagged.dcm": {},
        "lateral.dcm": dict(BodyPartExamined="CHEST", ViewPosition="LL"),
        "dog.dcm": dict(BodyPartExamined="THORAX", ViewPosition="RL",
                        PatientSpeciesDescription="Canine"),
        "hand.dcm": dict(BodyPartExamined="HAND"),
        "ct.dcm": dict(Modality="CT"),
    }
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, tags in studies.items():
        write_dicom(scans / name, gray, **tags)
    results = {r.source.rsplit("/", 1)[-1]: r for r in model.predict(scans)}
    for name in ("pa.dcm", "untagged.dcm"):
        assert results[name].ok and results[name].label in model.labels
    for name in ("lateral.dcm", "dog.dcm", "hand.dcm", "ct.dcm"):
        held = results[name]
        assert held.flagged and held.label is None and np.isnan(held.probability), held
        assert held.error.startswith(PREFIX) and held.to_dict()["probability"] is None
    assert "lateral view (ViewPosition LL)" in results["lateral.dcm"].error
    assert "THORAX" in results["dog.dcm"].error
    with pytest.raises(pneumocnn.NotFrontalChestError, match="Modality is CT"):
        model.predict(scans / "ct.dcm")
    unguarded = model.predict(scans, guard=False)
    assert all(r.ok and not r.flagged for r in unguarded)
    assert model.predict(scans / "lateral.dcm", guard=False).probability == pytest.approx(
        results["pa.dcm"].probability, abs=1e-6)  # the same pixels
