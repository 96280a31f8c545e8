"""pneumocnn.clinic.structured_report and pneumocnn.clinic.entry: the report of an X-ray is
written from the worklist entry its file was read into (one read for pixels, identifiers and
header), on DICOM files written by the test from the real X-rays in tests/data (the shipped
tiny int8 model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import TINY_INT8, real_images
from PIL import Image

pydicom = pytest.importorskip("pydicom", reason="a DICOM report needs pip install 'pneumocnn[dicom]'")

from dicomfiles import write_dicom  # noqa: E402

import pneumocnn  # noqa: E402
from pneumocnn.clinic import structured_report, triage  # noqa: E402
from pneumocnn.clinic.entry import COLUMNS, Entry, not_scored  # noqa: E402
from pneumocnn.core.guard import PREFIX  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return pneumocnn.load(TINY_INT8)


def xray_file(path, **tags):
    with Image.open(real_images("PNEUMONIA", 1, start=3)[0]) as image:
        pixels = np.asarray(image.convert("L"))
    tags = {"PatientID": "P42", "PatientName": "Doe^Jane", "AccessionNumber": "A42",
            "StudyInstanceUID": "1.2.3.4", "SeriesInstanceUID": "1.2.3.4.5",
            "StudyDate": "20260102", "BodyPartExamined": "CHEST", "ViewPosition": "PA", **tags}
    return write_dicom(path, pixels, **tags)


def test_the_report_is_written_from_the_entry_its_file_was_read_into(tmp_path, tiny):
    path = xray_file(tmp_path / "study.dcm")
    entry = triage.score(tiny, path, str(path), tmp_path, heatmaps="none")
    assert entry.prediction == tiny.predict(path)  # the answer predict gives
    assert entry.identifiers == {"PatientID": "P42", "AccessionNumber": "A42",
                                 "StudyInstanceUID": "1.2.3.4", "SeriesInstanceUID": "1.2.3.4.5",
                                 "SOPInstanceUID": str(pydicom.dcmread(path).SOPInstanceUID),
                                 "StudyDate": "20260102"}
    assert "PixelData" not in entry.header.elements and "Rows" not in entry.header.elements
    report = structured_report.structured_report(entry, tiny)
    assert (report.PatientID, report.PatientName, report.AccessionNumber) == ("P42", "Doe^Jane",
                                                                              "A42")
    assert report.StudyInstanceUID == "1.2.3.4"
    content = {item.ConceptNameCodeSequence[0].CodeValue: item for item in report.ContentSequence}
    assert content["PROBABILITY"].MeasuredValueSequence[0].NumericValue == pytest.approx(
        entry.prediction.probability, abs=1e-6)
    assert entry.row()["probability"] == f"{entry.prediction.probability:.6f}"
    assert str(content["PROBABILITY"].MeasuredValueSequence[0].NumericValue) == (
        entry.row()["probability"])  # the report and the worklist print the same number


def test_a_refused_file_keeps_its_identifiers_and_gets_no_report(tmp_path, tiny):
    path = xray_file(tmp_path / "lateral.dcm", ViewPosition="LL")
    entry = triage.score(tiny, path, str(path), tmp_path, heatmaps="none")
    assert entry.prediction.flagged and entry.error.startswith(PREFIX)
    assert entry.identifiers["PatientID"] == "P42" and entry.header is not None
    with pytest.raises(ValueError, match="nothing to report"):
        structured_report.structured_report(entry, tiny)


def test_an_entry_is_its_csv_row_and_back(tmp_path, tiny):
    path = xray_file(tmp_path / "study.dcm")
    entry = triage.score(tiny, path, str(path), tmp_path, heatmaps="none")
    again = Entry.from_row(entry.row())
    assert again.row() == entry.row() and list(entry.row()) == COLUMNS
    assert (again.file, again.identifiers, again.header) == (entry.file, entry.identifiers, None)
    with pytest.raises(ValueError, match="nothing to report"):  # the CSV holds no header
        structured_report.structured_report(again, tiny)
    failed = Entry(not_scored("gone.jpeg", "cannot read"), {"PatientID": "P1"})
    assert failed.row() == {**dict.fromkeys(COLUMNS, ""), "file": "gone.jpeg",
                            "PatientID": "P1", "error": "cannot read"}
    back = Entry.from_row(failed.row())
    assert (back.row(), back.identifiers) == (failed.row(), failed.identifiers)
    assert math.isnan(back.prediction.probability) and not back.prediction.ok
    assert failed.not_scored("later").error == "later" and Entry.from_row(
        entry.not_scored("no report: x").row()).identifiers == entry.identifiers
