"""pneumocnn.clinic.triage: the worklist (sorted, resumable, failures apart) and its
report, rendered in a real browser."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_INT8, real_images
from PIL import Image
from test_cli import EXAMPLES, cut_last_row, read_csv

import pneumocnn


def test_triage_worklist_sorted_resumable_with_errors_apart(tmp_path):
    pytest.importorskip("pydicom")  # a DICOM study is on the worklist
    from test_dicom import write_dicom

    from pneumocnn.clinic.triage import triage

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


def test_triage_resumes_after_a_row_cut_in_half(tmp_path):
    from pneumocnn.clinic.triage import triage

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in EXAMPLES[:3]:
        shutil.copy(path, scans / path.name)
    first = triage(scans, tmp_path / "report", heatmaps=False, progress=lambda d, t: None)
    scores = tmp_path / "report" / "scores.csv"
    complete = read_csv(scores)
    cut_last_row(scores)
    seen = []
    again = triage(scans, tmp_path / "report", heatmaps=False,
                   progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 3)]  # only the file whose row was cut is scored again
    rows = read_csv(scores)
    assert rows[:2] == complete[:2] and len(rows) == 3
    assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in complete)
    assert again.rows == first.rows


def test_triage_lists_a_lateral_view_apart_with_its_study_identifiers(tmp_path):
    """The guard in the worklist: a lateral view is not ranked among the scored X-rays; its row
    keeps the study's identifiers (for the clinic to find it) and says why; --no-guard ranks
    it."""
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    from pneumocnn.cli import main
    from pneumocnn.core.guard import PREFIX

    scans = tmp_path / "scans"
    scans.mkdir()
    with Image.open(real_images("PNEUMONIA", 1, start=9)[0]) as image:
        gray = np.asarray(image.convert("L"))
    write_dicom(scans / "lateral.dcm", gray, ViewPosition="LL", PatientID="P7", AccessionNumber="A7")
    shutil.copy(real_images("NORMAL", 1)[0], scans / "frontal.jpeg")
    argv = ["triage", str(scans), "--model", str(TINY_INT8), "--no-heatmaps"]
    assert main([*argv, "--out", str(tmp_path / "report")]) == 1
    frontal, lateral = read_csv(tmp_path / "report" / "worklist.csv")
    assert frontal["file"].endswith("frontal.jpeg") and frontal["label"]
    assert (lateral["label"], lateral["probability"]) == ("", "")
    assert lateral["error"] == f"{PREFIX}lateral view (ViewPosition LL)"
    assert (lateral["PatientID"], lateral["AccessionNumber"]) == ("P7", "A7")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<tr") == 2 and "lateral view (ViewPosition LL)" in page
    assert main([*argv, "--out", str(tmp_path / "unguarded"), "--no-guard"]) == 0
    assert all(row["label"] for row in read_csv(tmp_path / "unguarded" / "worklist.csv"))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_a_real_browser(tmp_path):
    import subprocess

    from pneumocnn.clinic.triage import triage

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
