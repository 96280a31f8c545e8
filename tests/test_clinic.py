"""The clinic workflow: DICOM input, explanations, the triage worklist."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_INT8, TINY_SETTINGS, real_images
from PIL import Image

import pneumocnn
from pneumocnn.runtime.explain import grad_cam, occlusion, overlay

pydicom = pytest.importorskip("pydicom")


def write_dicom(path, pixels: np.ndarray, bits_stored: int = 8, monochrome1: bool = False,
                window: tuple[float, float] | None = None, **tags) -> None:
    """A real DICOM file (Explicit VR Little Endian, DX) holding ``pixels``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
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
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    dataset.PixelData = pixels.astype(dtype).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def xray():
    path = real_images("PNEUMONIA", 1, start=7)[0]
    with Image.open(path) as image:
        return path, np.asarray(image.convert("L"))


def test_dicom_made_from_a_jpeg_gives_the_jpeg_answer(xray, tmp_path):
    path, gray = xray
    model = pneumocnn.load(TINY_INT8)
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
    from pneumocnn.core.preprocessing import load_gray

    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, window=(2048, 1024))
    shown = np.asarray(load_gray(tmp_path / "w.dcm"))
    assert shown[0, 0] == 0 and shown[0, -1] == 255  # outside the window: clipped
    middle = shown[0, 128]  # stored 2048, the window centre
    assert 120 <= middle <= 135


def test_pydicom_test_files_are_read_or_refused_clearly():
    from pydicom.data import get_testdata_file

    model = pneumocnn.load(TINY_INT8)
    ct = get_testdata_file("CT_small.dcm")  # signed 16-bit with rescale
    assert 0.0 <= model.predict(ct).probability <= 1.0
    jpeg_ls = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(pneumocnn.InputError, match="pip install"):
        model.predict(jpeg_ls)


def _patch_dataset(root, count=80, size=64, seed=0):
    """Noise X-ray stand-ins; PNEUMONIA ones carry a bright square somewhere."""
    rng = np.random.default_rng(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(60, 120, (size, size)).astype(np.uint8)
            if label == "PNEUMONIA":
                r, c = rng.integers(4, size - 20, 2)
                image[r : r + 16, c : c + 16] = 240
            Image.fromarray(image).save(root / label / f"{label}-{i}.png")


@pytest.mark.training
def test_heatmaps_land_on_the_evidence(tmp_path):
    _patch_dataset(tmp_path / "data")
    settings = {**TINY_SETTINGS, "epochs": 6, "batch_size": 16, "validation_fraction": 0.2}
    run = pneumocnn.train(tmp_path / "data", tmp_path / "run", **settings)
    model = pneumocnn.load(run.tflite_models["float32"])
    image = np.random.default_rng(1).integers(60, 120, (64, 64)).astype(np.uint8)
    image[36:52, 8:24] = 240
    explanation = occlusion(model, image)
    assert explanation.probability > 0.5
    cam = grad_cam(pneumocnn.load(run.keras_model), image).heatmap
    patch = np.zeros((64, 64), bool)
    patch[36:52, 8:24] = True
    assert explanation.heatmap[patch].mean() > 2 * explanation.heatmap[~patch].mean()
    # Grad-CAM at the last 8 x 8 convolution, behind Flatten + Dense, is coarser
    assert cam[patch].mean() > 1.2 * cam[~patch].mean()
    picture = overlay(image, explanation)
    assert picture.size == (384, 384) and picture.mode == "RGB"


def test_triage_worklist_sorted_resumable_with_errors_apart(tmp_path):
    from pneumocnn.runtime.triage import triage

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in real_images("NORMAL", 3) + real_images("PNEUMONIA", 3):
        shutil.copy(path, scans / path.name)
    with Image.open(real_images("PNEUMONIA", 1, start=9)[0]) as image:
        write_dicom(scans / "study.dcm", np.asarray(image.convert("L")),
                    PatientID="P123", AccessionNumber="A9")
    (scans / "broken.jpeg").write_bytes(b"not an image")
    model = pneumocnn.load(TINY_INT8)
    seen = []
    worklist = triage(scans, tmp_path / "report", model, progress=lambda d, t: seen.append(d))
    assert seen == list(range(1, 9))
    rows = list(csv.DictReader(worklist.csv_path.open()))
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 7 and [r["file"] for r in rows if r["error"]] == [str(scans / "broken.jpeg")]
    probabilities = [float(r["probability"]) for r in scored]
    assert probabilities == sorted(probabilities, reverse=True)
    first_jpeg = next(r for r in scored if r["file"].endswith(".jpeg"))
    assert float(first_jpeg["probability"]) == pytest.approx(
        model.predict(first_jpeg["file"]).probability, abs=1e-6)  # the answer predict gives
    assert rows[-1]["error"]
    dicom_row = next(r for r in rows if r["file"].endswith("study.dcm"))
    assert dicom_row["PatientID"] == "P123" and dicom_row["AccessionNumber"] == "A9"
    page = worklist.html_path.read_text()
    assert "not a diagnosis" in page and "broken.jpeg" in page and page.count("<tr") == 8
    assert "data:image/png;base64" in page

    (scans / "new.jpeg").write_bytes(real_images("NORMAL", 1, start=20)[0].read_bytes())
    seen.clear()
    again = triage(scans, tmp_path / "report", model, progress=lambda d, t: seen.append(d))
    assert seen == [9] and len(again.rows) == 9


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_a_real_browser(tmp_path):
    import subprocess

    from pneumocnn.runtime.triage import triage

    examples = Path(__file__).resolve().parents[1] / "examples" / "xrays"
    worklist = triage(examples, tmp_path / "report", heatmaps=True)
    url = worklist.html_path.as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(["chromium", *CHROMIUM_FLAGS, *profile, "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<tr") == 5 and "not a diagnosis" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}",
                    "--window-size=1200,900", url], capture_output=True, timeout=120)
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=float)
    assert pixels.shape == (900, 1200) and pixels.std() > 30  # text and X-rays, not a blank page


def test_explain_and_triage_on_the_command_line(tmp_path):
    from pneumocnn.cli import main

    image = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "occlusion.png"
    assert main(["explain", image, "--model", str(TINY_INT8), "--method", "occlusion",
                 "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size == (384, 384)
    with pytest.raises(ValueError, match="Grad-CAM needs a .keras"):
        grad_cam(pneumocnn.load(TINY_INT8), image)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(image, scans)
    (scans / "bad.png").write_bytes(b"\x89PNG broken")
    code = main(["triage", str(scans), "--out", str(tmp_path / "report"), "--no-heatmaps",
                 "--model", str(TINY_INT8)])
    assert code == 1 and (tmp_path / "report" / "report.html").exists()


@pytest.mark.training
def test_explain_grad_cam_on_the_command_line(tiny_run, tmp_path):
    from pneumocnn.cli import main

    image = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "grad-cam.png"
    assert main(["explain", image, "--model", str(tiny_run.keras_model), "--method", "grad-cam",
                 "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size == (384, 384)


def test_dicom_without_pydicom_names_the_extra(xray, tmp_path):
    import subprocess
    import sys
    import textwrap

    write_dicom(tmp_path / "study.dcm", xray[1])
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pydicom"] = None
        import pneumocnn
        model = pneumocnn.load({str(TINY_INT8)!r})
        try:
            model.predict({str(tmp_path / "study.dcm")!r})
        except pneumocnn.MissingDependencyError as error:
            print("refused:", error)
        print(model.predict([{str(tmp_path / "study.dcm")!r}])[0].error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pip install 'pneumocnn[dicom]'") == 2
