"""The result of one X-ray as a DICOM Structured Report (Comprehensive SR), for the PACS.

The report joins the X-ray's study (same patient and study; a series of pneumocnn's own) and
holds, under the title "Chest X-ray pneumonia triage": the finding (SNOMED CT Pneumonia or
Normal), the calibrated probability of pneumonia and the model's threshold (numbers without
units), the algorithm's name (model file) and version (pneumocnn version and the model file's
SHA-256), the notice that it is a triage aid, not a diagnosis, and a reference to the image
scored (also listed as the evidence of the report). Concepts that no public coding scheme names
are coded in the private scheme ``99PNEUMOCNN``.

The report's UIDs are derived from the X-ray's: writing it again for the same X-ray (after a
restart, say) gives the same SOP Instance UID, which a PACS takes as the same report. What is
copied from the X-ray is checked first: a study, series, SOP class or SOP instance UID that is
not a valid UID raises ``ValueError`` (no report is better than one filed wrongly); a patient or
study element whose value is not valid for its VR (a ``<script>`` StudyDate, control
characters in a PatientID) is left empty, with a warning. Needs pydicom (the ``dicom`` extra).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

from pneumocnn._version import __version__
from pneumocnn.clinic.entry import Entry, decimal
from pneumocnn.clinic.received import valid_uid
from pneumocnn.core.dicom import PATIENT_AND_STUDY
from pneumocnn.core.errors import MissingDependencyError
from pneumocnn.runtime.model import Model

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PRIVATE_SCHEME = "99PNEUMOCNN"
TITLE = ("TRIAGE", PRIVATE_SCHEME, "Chest X-ray pneumonia triage")
FINDING = ("121071", "DCM", "Finding")
PNEUMONIA = ("233604007", "SCT", "Pneumonia")
NORMAL = ("17621005", "SCT", "Normal")
PROBABILITY = ("PROBABILITY", PRIVATE_SCHEME, "Probability of pneumonia")
THRESHOLD = ("THRESHOLD", PRIVATE_SCHEME, "Decision threshold")
NO_UNITS = ("1", "UCUM", "no units")
ALGORITHM_NAME = ("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = ("111003", "DCM", "Algorithm Version")
COMMENT = ("121106", "DCM", "Comment")
SOURCE = ("260753009", "SCT", "Source")
NOTICE = ("A triage aid, not a diagnosis: it suggests which X-rays to read first; every X-ray "
          "still needs a radiologist's reading.")
SERIES_NUMBER = 9901
LOG = logging.getLogger(__name__)
# C0 controls but ESC (ISO 2022 code extensions in names): never valid in the elements copied
_CONTROLS = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_NAMESPACE = uuid.UUID("7a0c5e52-3d55-4a39-9a55-2f1b0c6e7d01")  # pneumocnn's, for derived UIDs


def report_uid(sop_instance_uid: str) -> str:
    """The SOP Instance UID of the report on the X-ray ``sop_instance_uid`` (always the same)."""
    return _derived_uid("report", sop_instance_uid)


def structured_report(entry: Entry, model: Model):
    """The Comprehensive SR (a pydicom ``Dataset`` with file meta) of the worklist ``entry`` of
    an X-ray scored by ``model``, from the header it was read with. Raises ``ValueError`` for
    an entry not scored or without a DICOM header."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import UID, ExplicitVRLittleEndian
    except ImportError:
        raise MissingDependencyError("a DICOM report needs pydicom: "
                                     "pip install 'pneumocnn[dicom]'") from None
    if not entry.prediction.ok or entry.header is None:
        raise ValueError(f"{entry.file} was not scored from a DICOM header: nothing to report")
    source = entry.header.elements
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if keyword in source and not valid_uid(str(source[keyword].value)):
            raise ValueError(f"the X-ray's {keyword} {str(source[keyword].value)[:80]!r} is not "
                             "a valid UID")
    study = str(source.get("StudyInstanceUID", "")) or _derived_uid("study", source.SOPInstanceUID)
    series = str(source.get("SeriesInstanceUID", "")) or _derived_uid("series", source.SOPInstanceUID)
    report = Dataset()
    for keyword in PATIENT_AND_STUDY:
        setattr(report, keyword, _valid_value(source, keyword))
    if not report.SpecificCharacterSet:
        del report.SpecificCharacterSet
    now = datetime.now(timezone.utc)
    for keyword, value in {
        "SOPClassUID": COMPREHENSIVE_SR,
        "SOPInstanceUID": report_uid(source.SOPInstanceUID),
        "StudyInstanceUID": study,
        "SeriesInstanceUID": _derived_uid("series of reports", study),
        "Modality": "SR",
        "SeriesNumber": SERIES_NUMBER,
        "SeriesDescription": "pneumocnn triage",
        "InstanceNumber": 1,
        "Manufacturer": "pneumocnn",
        "SoftwareVersions": __version__,
        "InstanceCreationDate": now.strftime("%Y%m%d"),
        "InstanceCreationTime": now.strftime("%H%M%S"),
        "ContentDate": now.strftime("%Y%m%d"),
        "ContentTime": now.strftime("%H%M%S"),
        "TimezoneOffsetFromUTC": "+0000",
        "CompletionFlag": "COMPLETE",
        "VerificationFlag": "UNVERIFIED",
        "ValueType": "CONTAINER",
        "ContinuityOfContent": "SEPARATE",
    }.items():
        setattr(report, keyword, value)
    report.ReferencedPerformedProcedureStepSequence = []
    report.PerformedProcedureCodeSequence = []
    report.ConceptNameCodeSequence = [_code(TITLE)]
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series
    referenced_series.ReferencedSOPSequence = [
        _reference(source.SOPClassUID, source.SOPInstanceUID)]
    evidence.ReferencedSeriesSequence = [referenced_series]
    report.CurrentRequestedProcedureEvidenceSequence = [evidence]
    prediction = entry.prediction
    finding = PNEUMONIA if prediction.label == model.labels[1] else NORMAL
    digest = model.description.sha256 or "none recorded"
    report.ContentSequence = [
        _item("CODE", FINDING, ConceptCodeSequence=[_code(finding)]),
        _number(PROBABILITY, decimal(prediction.probability)),
        _number(THRESHOLD, decimal(prediction.threshold)),
        _item("TEXT", ALGORITHM_NAME, TextValue=f"pneumocnn {Path(model.path).name}"[:1024]),
        _item("TEXT", ALGORITHM_VERSION, TextValue=f"pneumocnn {__version__}; model sha256 {digest}"),
        _item("TEXT", COMMENT, TextValue=NOTICE),
        _item("IMAGE", SOURCE, ReferencedSOPSequence=[
            _reference(source.SOPClassUID, source.SOPInstanceUID)]),
    ]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_SR)
    meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta = meta
    return report


def _valid_value(source, keyword: str):
    """The value of ``keyword`` in ``source`` if it is valid for its VR, else ``""`` (logged)."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    if keyword not in source or source[keyword].value in (None, ""):
        return ""
    element = source[keyword]
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, value, config.RAISE)
            if _CONTROLS.search(str(value)):
                raise ValueError("control characters")
    except ValueError as error:
        LOG.warning("%s of %s not copied into its report: %s", keyword, source.SOPInstanceUID,
                    str(error).splitlines()[0][:200].encode("unicode_escape").decode("ascii"))
        return ""
    return element.value


def encode(report) -> bytes:
    """``report`` as the bytes of a DICOM file (preamble, file meta, Explicit VR Little Endian)."""
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _derived_uid(what: str, source: str) -> str:
    """A UID of the form 2.25.N (PS3.5 B.2), N a name-based UUID of ``what`` and ``source``."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, f'{what} {source}').int}"


def _code(code: tuple[str, str, str]):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _reference(sop_class: str, sop_instance: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _item(value_type: str, concept: tuple[str, str, str], **values):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(concept)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _number(concept: tuple[str, str, str], value: str):
    from pydicom.dataset import Dataset

    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = [_code(NO_UNITS)]
    return _item("NUM", concept, MeasuredValueSequence=[measured])
