"""pneumocnn.clinic.triage: the worklist (sorted, resumable, failures apart) and its
report, rendered in a real browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_INT8, real_images
from hypothesis import given
from hypothesis import strategies as st
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
    assert "not a diagnosis" in page and "data:image" not in page  # pictures are files
    data = page_data(page)["rows"]
    assert [row[3] for row in data] == [row["file"] for row in rows]
    assert [row[0] for row in data] == [*range(1, 8), None] and data[-1][7] == rows[-1]["error"]
    # each picture once, as a small JPEG; heatmaps for the rows labelled PNEUMONIA only
    images = tmp_path / "report" / "images"
    pictures = sorted(images.glob("*.jpg"))
    flagged = [row for row in data if row[2] == "PNEUMONIA"]
    assert len(pictures) == 7 + len(flagged) and 0 < len(flagged) < 7
    assert all(bool(row[6]) == (row[2] == "PNEUMONIA") for row in data[:7])
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "JPEG" and max(image.size) <= 320
        assert picture.stat().st_size < 40_000

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
    first = triage(scans, tmp_path / "report", heatmaps="none", progress=lambda d, t: None)
    scores = tmp_path / "report" / "scores.csv"
    complete = read_csv(scores)
    cut_last_row(scores)
    seen = []
    again = triage(scans, tmp_path / "report", heatmaps="none",
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
    data = page_data((tmp_path / "report" / "report.html").read_text())["rows"]
    assert [row[0] for row in data] == [1, None]
    assert data[1][7] == f"{PREFIX}lateral view (ViewPosition LL)" and "P7" in data[1][4]
    assert main([*argv, "--out", str(tmp_path / "unguarded"), "--no-guard"]) == 0
    assert all(row["label"] for row in read_csv(tmp_path / "unguarded" / "worklist.csv"))


def page_data(page: str) -> dict:
    """The rows and settings a report page holds as JSON, for its script to show."""
    start = page.index('<script type="application/json" id="data">') + len(
        '<script type="application/json" id="data">')
    return json.loads(page[start:page.index("</script>", start)])


def test_heatmaps_where_asked_and_none_at_predicts_pace(tmp_path):
    """--heatmaps all draws one per scored file, none draws none (and scores exactly as
    predict does); a wrong value is refused before anything is scored."""
    from pneumocnn.clinic.triage import triage

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in real_images("NORMAL", 2) + real_images("PNEUMONIA", 2):
        shutil.copy(path, scans / path.name)
    model = pneumocnn.load(TINY_INT8)
    every = triage(scans, tmp_path / "all", model, heatmaps="all", progress=False)
    assert len(list((tmp_path / "all" / "images").glob("*-heatmap.jpg"))) == 4
    assert all(row[6] for row in page_data(every.html_path.read_text())["rows"])
    none = triage(scans, tmp_path / "none", model, heatmaps="none", progress=False)
    assert not list((tmp_path / "none" / "images").glob("*-heatmap.jpg"))
    assert len(list((tmp_path / "none" / "images").glob("*-xray.jpg"))) == 4
    assert {r["file"]: r["probability"] for r in none.rows} == {
        p.source: f"{p.probability:.6f}" for p in model.predict(scans)}
    with pytest.raises(ValueError, match="heatmaps must be one of flagged, all, none"):
        triage(scans, tmp_path / "wrong", model, heatmaps="some")
    assert not (tmp_path / "wrong").exists()
    from pneumocnn.cli import main

    assert main(["triage", str(scans), "--out", str(tmp_path / "cli"), "--heatmaps", "all",
                 "--model", str(TINY_INT8), "--no-progress"]) == 0
    assert len(list((tmp_path / "cli" / "images").glob("*-heatmap.jpg"))) == 4


def test_probabilities_are_printed_with_the_digits_their_order_needs():
    from pneumocnn.clinic.triage import shown_probabilities

    values = [0.9999996, 0.99999949, 0.999987, 0.99998, 0.9999, 0.95, 0.94, 0.5, 0.5, 0.0012]
    shown = shown_probabilities(values)
    assert shown == ["1.000000", "0.999999", "0.99999", "0.99998", "0.9999", "0.950", "0.940",
                     "0.500", "0.500", "0.001"]
    assert shown_probabilities([]) == [] and shown_probabilities([1.0]) == ["1.000"]


@given(st.lists(st.one_of(st.floats(0, 1), st.floats(0.999, 1), st.floats(0, 0.001)),
                max_size=60))
def test_printed_probabilities_fall_as_the_probabilities_do(values):
    from pneumocnn.clinic.triage import shown_probabilities

    values = sorted(values, reverse=True)
    shown = shown_probabilities(values)
    assert [float(p) for p in shown] == sorted((float(p) for p in shown), reverse=True)
    for a, b, p, q in zip(values, values[1:], shown, shown[1:], strict=False):
        assert (p == q) == (round(a, 6) == round(b, 6))
    assert all(float(p) < 1 for p, v in zip(shown, values, strict=True) if round(v, 6) < 1)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium (a profile of its own under ``tmp_path``) with ``args``."""
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=180)


@needs_chromium
def test_report_renders_in_a_real_browser(tmp_path):
    from pneumocnn.clinic.triage import triage

    worklist = triage(EXAMPLES[0].parent, tmp_path / "report")
    url = worklist.html_path.as_uri()
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert dom.count("<tr") == 6 and "not a diagnosis" in dom  # header, 4 rows, the line
    assert dom.count('loading="lazy"') == 4 + 2  # 4 X-rays, 2 heatmaps (the PNEUMONIAs)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=float)
    assert pixels.shape == (900, 1200) and pixels.std() > 30  # text and X-rays, not a blank page


def ten_thousand_rows(tmp_path: Path) -> tuple[Path, pneumocnn.Model]:
    """A report folder of 10,000 scored rows and 30 failures: the four example X-rays scored
    for real (with their pictures), then rows for 10,026 more names with random
    probabilities, each with the pictures of an example (hard links: a picture per row)."""
    from pneumocnn.clinic.entry import Entry, not_scored
    from pneumocnn.clinic.triage import COLUMNS, SCORES, _stem, append_score, triage

    model = pneumocnn.load()
    out = tmp_path / "report"
    triage(EXAMPLES[0].parent, out, model, heatmaps="all", progress=False)
    real = read_csv(out / SCORES)
    images = out / "images"
    rng = np.random.default_rng(0)
    with (out / SCORES).open("a", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=COLUMNS)
        for k in range(10_026):
            name = f"/archive/2026/{k:05d}.dcm"
            example = real[k % len(real)]
            probability = rng.uniform()
            label = model.labels[int(probability >= model.threshold)]
            writer.writerow({**example, "file": name, "probability": f"{probability:.6f}",
                             "label": label, "PatientID": f"P{k:05d}"})
            for kind in ("xray", "heatmap"):
                os.link(images / f"{_stem(example['file'])}-{kind}.jpg",
                        images / f"{_stem(name)}-{kind}.jpg")
        for k in range(30):
            append_score(out / SCORES, Entry(not_scored(f"/archive/bad-{k}.jpeg", "cut short")))
    return out, model


@needs_chromium
def test_ten_thousand_rows_open_at_once_in_a_real_browser(tmp_path):
    """The worklist of an archive run: the page holds its rows as data, shows 100 of them
    (rank, a probability that shows the order, label), a line where PNEUMONIA ends, filters
    by label and by text, loads only the pictures of the rows shown, and is ready within a
    generous bound."""
    from pneumocnn.clinic.triage import write_worklist

    out, model = ten_thousand_rows(tmp_path)
    worklist = write_worklist(out, model)
    page = worklist.html_path.read_text()
    assert len(page) < 10_030 * 250  # data, not pictures: about 150 bytes a row
    rows = page_data(page)["rows"]
    assert len(rows) == 10_060 and sum(row[0] is None for row in rows) == 30
    flagged = sum(row[2] == "PNEUMONIA" for row in rows)
    # the page, timed by the browser: navigation start to the rows on screen, laid out
    timed = tmp_path / "timed.html"
    timed.write_text(page.replace("</body>", "<script>document.body.offsetHeight;"
                     "document.body.dataset.readyMs = performance.now();</script></body>"))
    (tmp_path / "images").symlink_to(out / "images")
    dom = chromium(tmp_path, "--dump-dom", timed.as_uri()).stdout
    ready_ms = float(re.search(r'data-ready-ms="([0-9.]+)"', dom).group(1))
    print(f"10,060 rows: page ready in {ready_ms:.0f} ms, {len(page) / 1e6:.2f} MB")
    assert ready_ms < 5000
    body = dom[dom.index('<tbody id="rows">'):dom.index("</tbody>")]
    shown = re.findall(r'<td class="rank">(\d+)</td><td class="p">([0-9.]+)</td>', body)
    assert [int(rank) for rank, _ in shown] == list(range(1, 101))
    probabilities = [p for _, p in shown]
    top = sorted((float(row["probability"]) for row in read_csv(out / "scores.csv")
                  if not row["error"]), reverse=True)[:100]
    assert len(set(probabilities)) == len(set(top)) and "1.000" not in probabilities
    assert [float(p) for p in probabilities] == sorted(map(float, probabilities), reverse=True)
    assert body.count('loading="lazy"') == 200 and "rows 1-100 of 10,060 (page 1 of 101)" in dom
    # the line where PNEUMONIA ends, on the page that holds it
    page_of_line = flagged // 100 + 1
    dom = chromium(tmp_path, "--dump-dom", f"{worklist.html_path.as_uri()}#page={page_of_line}").stdout
    body = dom[dom.index('<tbody id="rows">'):dom.index("</tbody>")]
    assert body.count('class="line"') == 1
    before, after = body.split('class="line"')
    assert "PNEUMONIA" in before.rsplit("<tr", 1)[0] and f"threshold {model.threshold:.3f}" in after
    assert 'class="positive"' not in after
    # filtered by label, and by text
    dom = chromium(tmp_path, "--dump-dom", f"{worklist.html_path.as_uri()}#filter=negative").stdout
    assert f"rows 1-100 of {10_030 - flagged:,}" in dom and 'class="positive"' not in dom
    dom = chromium(tmp_path, "--dump-dom", f"{worklist.html_path.as_uri()}#filter=failed").stdout
    body = dom[dom.index('<tbody id="rows">'):dom.index("</tbody>")]
    assert "rows 1-30 of 30" in dom and body.count("cut short") == 30
    dom = chromium(tmp_path, "--dump-dom", f"{worklist.html_path.as_uri()}#find=P01234").stdout
    assert "rows 1-1 of 1" in dom and "/archive/2026/01234.dcm" in dom
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", worklist.html_path.as_uri())
    with Image.open(shot) as picture:
        assert np.asarray(picture.convert("L"), dtype=float).std() > 30
