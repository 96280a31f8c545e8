"""pneumocnn.clinic.node: the DICOM node, driven by real pynetdicom SCUs in the test process
sending DICOM files made from the real X-rays in tests/data, to nodes on free localhost ports
(the shipped tiny int8 model; no TensorFlow)."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="the DICOM node needs pip install 'pneumocnn[dicom-net]'")

import pydicom  # noqa: E402
from dicomfiles import compressed, cut_codestream  # noqa: E402
from dicomnet import LOCAL, free_port, rows, send, xray  # noqa: E402
from helpers import REPO, TINY_INT8  # noqa: E402
from pydicom import uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom import association as association_module  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from test_triage import page_data  # noqa: E402

import pneumocnn  # noqa: E402
from pneumocnn.clinic import structured_report  # noqa: E402
from pneumocnn.clinic.forward import Destination  # noqa: E402
from pneumocnn.clinic.node import Node  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return pneumocnn.load(TINY_INT8)


def node(out: Path, model, **options) -> Node:
    options = {"port": 0, "host": LOCAL, "allow": ["XRAY1", "XRAY2", "XRAY3", "XRAY4"],
               "heatmaps": "none", **options}
    return Node(out, model, **options)


def test_stores_scores_lists_and_reports_what_arrives(tmp_path, tiny):
    """Two DX and one CR in one association: each stored as sent before success, scored as
    predict scores the file, listed with its study identifiers, and reported in an SR that
    references the X-ray's study, series and instance."""
    sent = [xray("PNEUMONIA", 0), xray("NORMAL", 1), xray("PNEUMONIA", 2, cr=True)]
    with node(tmp_path / "node", tiny) as scp:
        assert send(scp.port, sent) == [0, 0, 0]
        assert scp.wait_idle(60)
    out = tmp_path / "node"
    listed = rows(out)
    assert len(listed) == 3 and not any(row["error"] for row in listed)
    probabilities = [float(row["probability"]) for row in listed]
    assert probabilities == sorted(probabilities, reverse=True)
    for dataset in sent:
        row = next(r for r in listed if r["SOPInstanceUID"] == dataset.SOPInstanceUID)
        stored = out / "received" / f"{dataset.SOPInstanceUID}.dcm"
        assert row["file"] == str(stored) and row["PatientID"] == dataset.PatientID
        assert row["StudyInstanceUID"] == dataset.StudyInstanceUID
        assert np.array_equal(pydicom.dcmread(stored).pixel_array, dataset.pixel_array)
        assert float(row["probability"]) == pytest.approx(tiny.predict(stored).probability, abs=1e-6)

        report_name = f"{structured_report.report_uid(dataset.SOPInstanceUID)}.dcm"
        report = pydicom.dcmread(out / "results" / report_name)
        assert report.SOPClassUID == ComprehensiveSRStorage and report.Modality == "SR"
        assert (report.StudyInstanceUID, report.PatientID) == (dataset.StudyInstanceUID, dataset.PatientID)
        assert report.AccessionNumber == dataset.AccessionNumber
        content = {item.ConceptNameCodeSequence[0].CodeValue: item for item in report.ContentSequence}
        finding = content["121071"].ConceptCodeSequence[0]
        assert finding.CodeMeaning == ("Pneumonia" if row["label"] == "PNEUMONIA" else "Normal")
        measured = {key: float(content[key].MeasuredValueSequence[0].NumericValue)
                    for key in ("PROBABILITY", "THRESHOLD")}
        assert measured["PROBABILITY"] == pytest.approx(float(row["probability"]), abs=1e-6)
        assert measured["THRESHOLD"] == pytest.approx(tiny.threshold, abs=1e-6)
        assert tiny.description.sha256 in content["111003"].TextValue
        image = content["260753009"].ReferencedSOPSequence[0]
        assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (
            dataset.SOPClassUID, dataset.SOPInstanceUID)
        evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
        series = evidence.ReferencedSeriesSequence[0]
        assert (evidence.StudyInstanceUID, series.SeriesInstanceUID) == (
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID)
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    page = (out / "report.html").read_text()
    assert len(page_data(page)["rows"]) == 3 and "not a diagnosis" in page


_OPENED: list[str] = []  # files opened while a test watches (an audit hook cannot be removed)
_WATCHING = threading.Event()


def _note_opens(event: str, args: tuple) -> None:
    # one event per file object opened (its mode given; an opener's os.open has none)
    path, mode, _ = args if event == "open" else (None, None, None)
    if _WATCHING.is_set() and mode is not None and isinstance(path, (str, os.PathLike)):
        _OPENED.append(os.fspath(path))


sys.addaudithook(_note_opens)


def test_a_received_object_is_opened_and_parsed_once_to_score_list_and_report(tmp_path, tiny,
                                                                            monkeypatch):
    """Scoring a received object reads its file once: one open, one parse by pydicom, from
    which come the model's pixels, the worklist's identifiers and the report's header."""
    parsed = []
    dcmread = pydicom.dcmread

    def counted(source, *args, **kwargs):
        parsed.append(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source.name)
        return dcmread(source, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    sent = xray("PNEUMONIA", 5)
    with node(tmp_path / "node", tiny) as scp:
        _OPENED.clear()
        _WATCHING.set()
        try:
            assert send(scp.port, [sent]) == [0]
            assert scp.wait_idle(60)
        finally:
            _WATCHING.clear()
    stored = str(tmp_path / "node" / "received" / f"{sent.SOPInstanceUID}.dcm")
    assert (_OPENED.count(stored), parsed.count(stored)) == (1, 1)  # (3, 3) before issue 29
    (listed,) = rows(tmp_path / "node")
    assert listed["PatientID"] == sent.PatientID and not listed["error"]
    report = tmp_path / "node" / "results" / f"{structured_report.report_uid(sent.SOPInstanceUID)}.dcm"
    assert dcmread(report).PatientID == sent.PatientID


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the sender's own bad UID
def test_refusals_never_stop_the_node(tmp_path, tiny, caplog, monkeypatch):
    """Refused with a logged reason, and the node goes on storing: a calling AE title not on
    the allow-list, a wrong called AE title, a CT (context rejected), a malformed object, one
    whose data set names another SOP class than it was sent as, one whose SOP Instance UID would
    be a path; an object over the size limit aborts its own association as the limit is
    crossed; a lateral view is stored and listed apart by the guard."""
    caplog.set_level(logging.INFO, logger="pneumocnn")
    malformed = xray("NORMAL", 3, PatientID="HOSTILE")
    encode = association_module.encode

    def hostile_encode(dataset, *args):
        if dataset.get("PatientID") == "CT":  # sent as a DX, but its data set says CT
            dataset = copy.deepcopy(dataset)
            dataset.SOPClassUID = CTImageStorage
        if dataset.get("PatientID") == "PATH":  # a UID that would be a path out of received/
            dataset = copy.deepcopy(dataset)
            dataset.SOPInstanceUID = "../../escaped"
        encoded = encode(dataset, *args)
        if dataset.get("PatientID") == "HOSTILE":  # a sequence that is not one appended
            encoded += bytes.fromhex("4000 30a7") + b"SQ\0\0\xff\xff\xff\xff\x01\x02\x03"
        return encoded

    monkeypatch.setattr(association_module, "encode", hostile_encode)
    with node(tmp_path / "node", tiny, max_object_mb=0.1) as scp:
        assert send(scp.port, [xray()], calling="INTRUDER") is None
        assert send(scp.port, [xray()], called="SOMEONE") is None
        ae = AE(ae_title="XRAY1")
        ae.add_requested_context(CTImageStorage)
        association = ae.associate(LOCAL, scp.port, ae_title="PNEUMOCNN")
        refused = [(c.abstract_syntax, c.result) for c in association.rejected_contexts]
        assert refused == [(CTImageStorage, 0x03)]  # abstract syntax not supported
        assert not association.is_established  # nothing left to send: the sender aborts
        big = xray("NORMAL", 4)  # 50 kB of pixels and 100 kB of a private element
        big.private_block(0x0009, "TEST", create=True).add_new(0x10, "OB", bytes(100_000))
        assert send(scp.port, [big], calling="XRAY2") == [-1]  # aborted: no answer
        statuses = send(scp.port, [malformed, xray("NORMAL", 2, PatientID="CT"),
                                   xray("NORMAL", 1, PatientID="PATH"),
                                   xray("NORMAL", 5, ViewPosition="LL"), xray("NORMAL", 6)],
                        calling="XRAY2")
        assert statuses == [0xC000, 0xA900, 0xC000, 0, 0]
        assert scp.wait_idle(60)
    listed = rows(tmp_path / "node")
    assert len(listed) == 2 and listed[0]["label"] and "lateral view" in listed[1]["error"]
    assert len(list((tmp_path / "node" / "received").iterdir())) == 2
    assert len(list((tmp_path / "node" / "results").iterdir())) == 1  # no report unscored
    logged = caplog.text
    assert "refused INTRUDER@127.0.0.1: calling AE title 'INTRUDER' is not allowed" in logged
    assert "refused XRAY1@127.0.0.1: it called 'SOMEONE', not this node's AE title" in logged
    assert "dropped: an object over the limit of 104,857 bytes" in logged
    assert "status 0xC000" in logged and "cannot read it whole" in logged
    assert "invalid or mismatched SOP Instance UID '../../escaped'" in logged
    assert not list(tmp_path.rglob("escaped*"))
    assert "status 0xA900" in logged and f"SOP class {CTImageStorage} sent as" in logged


def test_a_cut_jpeg_is_stored_and_listed_as_an_error_with_no_report(tmp_path, tiny):
    """A JPEG baseline X-ray whose codestream was cut to a tenth (libjpeg would fill the rest):
    acknowledged and kept, listed with the reason, never scored and given no SR."""
    cut = cut_codestream(compressed(xray("PNEUMONIA", 0), uid.JPEGBaseline8Bit), 0.1)
    whole = compressed(xray("NORMAL", 1), uid.JPEGBaseline8Bit)
    contexts = [(DigitalXRayImageStorageForPresentation, [uid.JPEGBaseline8Bit])]
    with node(tmp_path / "node", tiny) as scp:
        assert send(scp.port, [cut, whole], contexts=contexts) == [0, 0]
        assert scp.wait_idle(60)
    listed = {row["SOPInstanceUID"]: row for row in rows(tmp_path / "node")}
    refused = listed[cut.SOPInstanceUID]
    assert not refused["label"] and not refused["probability"]
    assert "pixel data is cut short" in refused["error"]
    assert refused["file"].endswith(f"{cut.SOPInstanceUID}.dcm")
    assert listed[whole.SOPInstanceUID]["label"] == "NORMAL"
    reports = [pydicom.dcmread(path) for path in (tmp_path / "node" / "results").iterdir()]
    referenced = [report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                  .ReferencedSOPSequence[0].ReferencedSOPInstanceUID for report in reports]
    assert referenced == [whole.SOPInstanceUID]


def test_associations_beyond_the_limit_are_rejected(tmp_path, tiny, caplog):
    caplog.set_level(logging.INFO, logger="pneumocnn")
    with node(tmp_path / "node", tiny, max_associations=1) as scp:
        ae = AE(ae_title="XRAY1")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        held = ae.associate(LOCAL, scp.port, ae_title="PNEUMOCNN")
        assert held.is_established
        assert send(scp.port, [xray("NORMAL", 14)], calling="XRAY2") is None
        held.release()
        deadline = time.monotonic() + 10  # the server forgets the released one shortly after
        while (statuses := send(scp.port, [xray("NORMAL", 14)], calling="XRAY2")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert statuses == [0]
    assert "XRAY2@127.0.0.1: 1 associations at once already" in caplog.text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_only(tmp_path, tiny):
    """With a certificate and key the node speaks TLS only: a TLS sender that trusts the
    certificate stores; a sender without TLS does not get an association."""
    import ssl

    from pneumocnn.clinic.node import tls_context

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    with node(tmp_path / "node", tiny, tls=tls_context(cert, key)) as scp:
        client = ssl.create_default_context(cafile=str(cert))
        ae = AE(ae_title="XRAY1")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        association = ae.associate(LOCAL, scp.port, ae_title="PNEUMOCNN",
                                   tls_args=(client, LOCAL))
        assert association.is_established
        assert association.send_c_store(xray("NORMAL", 15)).Status == 0
        association.release()
        assert send(scp.port, [xray("NORMAL", 16)]) is None
        assert scp.wait_idle(60)
    assert len(rows(tmp_path / "node")) == 1


def test_a_duplicate_is_acknowledged_and_listed_once(tmp_path, tiny):
    dataset = xray("PNEUMONIA", 7)
    with node(tmp_path / "node", tiny) as scp:
        assert send(scp.port, [dataset]) == [0]
        assert scp.wait_idle(60)
        assert send(scp.port, [dataset, dataset], calling="XRAY2") == [0, 0]
        assert scp.wait_idle(60)
        with pytest.raises(pneumocnn.PneumocnnError, match="in use by another process"):
            node(tmp_path / "node", tiny).start()  # one node per folder
    assert len(rows(tmp_path / "node")) == 1
    assert len(rows(tmp_path / "node", "scores.csv")) == 1  # scored once


def test_echo_and_the_sop_classes_chest_radiographs_come_in(tmp_path, tiny):
    """C-ECHO is answered; Secondary Capture (single frame, and multi-frame grayscale byte)
    stating a radiographic Modality is scored as CR and DX are; the guard holds back a
    secondary capture that does not say it is a radiograph and a DX for processing, which are
    stored and listed with the failures."""
    secondary = xray("PNEUMONIA", 16, SOPClassUID=SecondaryCaptureImageStorage, Modality="CR")
    frames = xray("NORMAL", 17, SOPClassUID=MultiFrameGrayscaleByteSecondaryCaptureImageStorage)
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    unstated = xray("NORMAL", 18, SOPClassUID=SecondaryCaptureImageStorage)
    del unstated.Modality
    raw = xray("NORMAL", 19, SOPClassUID=DigitalXRayImageStorageForProcessing,
               PresentationIntentType="FOR PROCESSING")
    sent = [secondary, frames, unstated, raw]
    contexts = [SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                DigitalXRayImageStorageForProcessing]
    with node(tmp_path / "node", tiny) as scp:
        ae = AE(ae_title="XRAY1")
        ae.add_requested_context(Verification)
        association = ae.associate(LOCAL, scp.port, ae_title="PNEUMOCNN")
        assert association.send_c_echo().Status == 0
        association.release()
        assert send(scp.port, sent, contexts=contexts) == [0, 0, 0, 0]
        assert scp.wait_idle(60)
    listed = {row["SOPInstanceUID"]: row for row in rows(tmp_path / "node")}
    assert listed[secondary.SOPInstanceUID]["label"] and listed[frames.SOPInstanceUID]["label"]
    assert float(listed[frames.SOPInstanceUID]["probability"]) == pytest.approx(
        tiny.predict(tmp_path / "node" / "received" / f"{frames.SOPInstanceUID}.dcm").probability)
    assert "secondary capture that does not say" in listed[unstated.SOPInstanceUID]["error"]
    assert "DX for processing" in listed[raw.SOPInstanceUID]["error"]


def test_same_uid_other_pixels_is_kept_apart_and_listed_as_a_conflict(tmp_path, tiny, caplog):
    """An object sent again with the same SOP Instance UID: in another transfer syntax with the
    same pixels it is a repeat (listed once); with other pixels the first is kept and scored,
    the other kept in conflicts/, logged and listed as a conflict, never scored."""
    caplog.set_level(logging.INFO, logger="pneumocnn")
    first = xray("PNEUMONIA", 21)
    again = compressed(copy.deepcopy(first), uid.JPEGLosslessSV1)
    other = xray("NORMAL", 22)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    contexts = [(DigitalXRayImageStorageForPresentation,
                 [uid.ExplicitVRLittleEndian, uid.JPEGLosslessSV1])]
    with node(tmp_path / "node", tiny) as scp:
        assert send(scp.port, [first]) == [0]
        assert send(scp.port, [again], contexts=[(DigitalXRayImageStorageForPresentation,
                                                  [uid.JPEGLosslessSV1])]) == [0]
        assert send(scp.port, [other, other], contexts=contexts) == [0, 0]
        assert scp.wait_idle(60)
    listed = rows(tmp_path / "node")
    assert len(listed) == 2 and {row["SOPInstanceUID"] for row in listed} == {first.SOPInstanceUID}
    kept, conflict = listed
    assert kept["label"] and kept["file"].endswith(f"received/{first.SOPInstanceUID}.dcm")
    assert not conflict["label"] and conflict["error"].startswith("conflict: same SOP Instance UID")
    assert conflict["PatientID"] == other.PatientID
    stored = pydicom.dcmread(conflict["file"])
    assert np.array_equal(stored.pixel_array, other.pixel_array)
    assert len(list((tmp_path / "node" / "conflicts").iterdir())) == 1
    assert len(list((tmp_path / "node" / "results").iterdir())) == 1
    assert caplog.text.count(f"conflict: {first.SOPInstanceUID} is stored already") == 1
    assert f"already stored: {first.SOPInstanceUID}" in caplog.text


def test_csv_cells_never_start_a_formula(tmp_path, tiny):
    """PatientID and AccessionNumber holding spreadsheet formulas (and a NUL) reach
    worklist.csv and scores.csv as text: a leading quote, no NUL."""
    hostile = [("=HYPERLINK(\"http://x\")", "+1+1"), ("-2+3", "@SUM(A1)"), ("\t=cmd", "A\0B")]
    sent = [xray("NORMAL", 23 - k, PatientID=patient, AccessionNumber=accession)
            for k, (patient, accession) in enumerate(hostile)]
    with node(tmp_path / "node", tiny) as scp:
        assert send(scp.port, sent) == [0, 0, 0]
        assert scp.wait_idle(60)
    for name in ("worklist.csv", "scores.csv"):
        text = (tmp_path / "node" / name).read_text(encoding="utf-8")
        assert "\0" not in text
        listed = {row["SOPInstanceUID"]: row for row in rows(tmp_path / "node", name)}
        cells = [listed[d.SOPInstanceUID][key] for d in sent
                 for key in ("PatientID", "AccessionNumber")]
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells), cells
        assert cells[:4] == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)"]
        assert cells[4] == "'\t=cmd" and cells[5] == "AB"


@pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore:The value length")  # the sender's
def test_what_cannot_be_read_or_copied_is_refused_before_success(tmp_path, tiny, monkeypatch,
                                                                  caplog):
    """Answered with 0xC000 and never stored: Study or Series Instance UIDs that are paths,
    65 characters long, hold a NUL or a <script>; pixel data claiming 2,000,000,000 bytes and
    carrying 50 kB; data sets cut short at 11 points. A <script> StudyDate is stored and scored,
    and left out of the report."""
    caplog.set_level(logging.INFO, logger="pneumocnn")
    cuts = {f"CUT{k}": at for k, at in enumerate((7, 60, 150, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95,
                                                   -2, -1))}
    encode = association_module.encode

    def hostile_encode(dataset, *args):
        encoded = encode(dataset, *args)
        patient = str(dataset.get("PatientID", ""))
        if patient == "LIAR":  # PixelData (OB, explicit VR): claims 2e9 bytes
            at = encoded.rfind(b"\xe0\x7f\x10\x00OB")
            encoded = encoded[: at + 8] + (2_000_000_000).to_bytes(4, "little") + encoded[at + 12:]
        if patient in cuts:
            at = cuts[patient]
            encoded = encoded[: int(len(encoded) * at) if isinstance(at, float) else at]
        return encoded

    monkeypatch.setattr(association_module, "encode", hostile_encode)
    bad_uids = ["../../etc/x", "1." + "2" * 63, "1.2\0.3", "<script>alert(1)</script>"]
    refused = ([xray("NORMAL", 1, StudyInstanceUID=bad) for bad in bad_uids]
               + [xray("NORMAL", 2, SeriesInstanceUID=bad_uids[0]), xray("NORMAL", 3, PatientID="LIAR")]
               + [xray("NORMAL", 4, PatientID=name) for name in cuts])
    scripted = xray("PNEUMONIA", 5, StudyDate="<script>")
    with node(tmp_path / "node", tiny) as scp:
        statuses = send(scp.port, refused, contexts=[(DigitalXRayImageStorageForPresentation,
                                                      [uid.ExplicitVRLittleEndian])])
        # a cut that happens to end between elements leaves a data set without its SOP class
        assert all(status in (0xC000, 0xA900) for status in statuses), statuses
        assert statuses[:6] == [0xC000] * 6
        assert send(scp.port, [scripted]) == [0]
        assert scp.wait_idle(60)
    assert [path.name for path in (tmp_path / "node" / "received").iterdir()] == [
        f"{scripted.SOPInstanceUID}.dcm"]
    (report,) = (tmp_path / "node" / "results").iterdir()
    assert "StudyDate" not in pydicom.dcmread(report) or not pydicom.dcmread(report).StudyDate
    logged = caplog.text
    assert "invalid StudyInstanceUID '../../etc/x'" in logged
    assert "invalid SeriesInstanceUID '../../etc/x'" in logged
    assert "invalid StudyInstanceUID '1.2\\x00.3'" in logged
    assert "(7FE0,0010) claims 2,000,000,000 bytes" in logged
    assert logged.count("cut short") >= 8
    assert f"StudyDate of {scripted.SOPInstanceUID} not copied into its report" in logged


def test_a_full_disk_is_answered_out_of_resources(tmp_path, tiny, monkeypatch, caplog):
    """An object the node cannot write (no space left) gets 0xA700, so that the sender keeps
    it and tries again; once there is space, it is stored."""
    from pneumocnn.clinic import node as node_module

    written = node_module.write_object

    def full(*args):
        raise OSError(28, "No space left on device")

    dataset = xray("NORMAL", 10)
    with node(tmp_path / "node", tiny) as scp:
        monkeypatch.setattr(node_module, "write_object", full)
        assert send(scp.port, [dataset]) == [0xA700]
        monkeypatch.setattr(node_module, "write_object", written)
        assert send(scp.port, [dataset]) == [0]
        assert scp.wait_idle(60)
    assert len(rows(tmp_path / "node")) == 1
    assert "(status 0xA700): cannot store it ([Errno 28] No space left on device)" in caplog.text


def test_concurrent_associations_from_several_senders(tmp_path, tiny):
    """Four senders at once, three X-rays each, one of them sent by two senders."""
    shared = xray("NORMAL", 20)
    batches = [[xray("PNEUMONIA" if k % 2 else "NORMAL", 3 * s + k) for k in range(3)]
               for s in range(4)]
    batches[1].append(shared)
    batches[2].append(shared)
    results: dict[int, list[int] | None] = {}
    with node(tmp_path / "node", tiny) as scp:
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(
            s, send(scp.port, batches[s], calling=f"XRAY{s + 1}"))) for s in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert scp.wait_idle(60)
    assert sorted(map(len, results.values())) == [3, 3, 4, 4]
    assert all(status == 0 for statuses in results.values() for status in statuses)
    listed = rows(tmp_path / "node")
    assert len(listed) == 13 and len({row["SOPInstanceUID"] for row in listed}) == 13


class PACS:
    """A storage SCP for Structured Reports, standing for the clinic's PACS; it takes DICOM's
    default transfer syntax only."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(ComprehensiveSRStorage, [uid.ImplicitVRLittleEndian])

        def store(event) -> int:
            self.received.append(event.dataset)
            return 0

        self.server = ae.start_server((LOCAL, port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, store)])
        self.port = self.server.server_address[1]


def test_reports_are_forwarded_and_kept_when_the_pacs_is_down(tmp_path, tiny, caplog):
    """The PACS down: the send is tried, the failure logged, the report kept in results/ and
    outbox/; the PACS up again: it receives the report, and the outbox empties."""
    caplog.set_level(logging.INFO, logger="pneumocnn")
    port = free_port()
    dataset = xray("PNEUMONIA", 8)
    with node(tmp_path / "node", tiny, forward=f"PACS@{LOCAL}:{port}", forward_attempts=2,
              forward_pause=0.05) as scp:
        assert send(scp.port, [dataset]) == [0]
        assert scp.wait_idle(60)
        report = f"{structured_report.report_uid(dataset.SOPInstanceUID)}.dcm"
        assert scp.forwarder.pending() == [report]
        assert (tmp_path / "node" / "results" / report).is_file()
        assert f"could not forward {tmp_path / 'node' / 'results' / report}" in caplog.text
        pacs = PACS(port)
        try:
            scp.forwarder.wake()
            assert scp.wait_idle(60) and scp.forwarder.pending() == []
            second = xray("NORMAL", 9)
            assert send(scp.port, [second]) == [0]
            assert scp.wait_idle(60)
        finally:
            pacs.server.shutdown()
    assert [d.SOPInstanceUID for d in pacs.received] == [
        structured_report.report_uid(d.SOPInstanceUID) for d in (dataset, second)]
    forwarded = pacs.received[0]
    assert forwarded.StudyInstanceUID == dataset.StudyInstanceUID
    assert forwarded.ContentSequence[0].ConceptCodeSequence[0].CodeValue in ("233604007", "17621005")
    assert (tmp_path / "node" / "results" / report).is_file()  # sent, and still kept


def test_destination_is_parsed_or_refused():
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert Destination.parse("ARCH 1@[::1]:11112") == Destination("ARCH 1", "::1", 11112)
    for wrong in ("PACS", "PACS@host", "@host:104", "PACS@host:0", "A" * 17 + "@host:104"):
        with pytest.raises(ValueError, match="AE@HOST:PORT"):
            Destination.parse(wrong)


# a node in its own process whose scoring never finishes once `blocked` (a file) exists
_BLOCKING_NODE = """
import sys, time
from pathlib import Path
from pneumocnn.clinic import node, triage
scored = triage.score
def score(*args, **kwargs):
    while Path(sys.argv[3]).exists():
        time.sleep(0.05)
    return scored(*args, **kwargs)
triage.score = score
scp = node.Node(sys.argv[1], sys.argv[2], port=0, host="127.0.0.1", heatmaps="none").start()
print(scp.port, flush=True)
time.sleep(3600)
"""


def test_kill_9_before_scoring_and_a_restart_scores_each_object_once(tmp_path, tiny, monkeypatch):
    """Objects acknowledged but not scored when the node is killed with SIGKILL are scored at
    the restart; the one scored before the kill is not scored again; nothing is listed twice."""
    out, blocked = tmp_path / "node", tmp_path / "blocked"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", _BLOCKING_NODE, str(out), str(TINY_INT8),
                                str(blocked)], stdout=subprocess.PIPE, text=True,
                               env=environment, cwd=REPO)
    try:
        port = int(process.stdout.readline())
        first, later = xray("PNEUMONIA", 10), [xray("NORMAL", 11), xray("PNEUMONIA", 12)]
        assert send(port, [first]) == [0]
        deadline = time.monotonic() + 60
        while not (out / "scores.csv").exists() or len(rows(out, "scores.csv")) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        blocked.touch()
        assert send(port, later) == [0, 0]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(rows(out, "scores.csv")) == 1
    assert len(list((out / "received").glob("*.dcm"))) == 3

    from pneumocnn.clinic import triage

    scored, calls = triage.score, []
    monkeypatch.setattr(triage, "score", lambda *a, **k: calls.append(a[2]) or scored(*a, **k))
    with node(out, tiny) as scp:
        assert scp.wait_idle(60)
    assert sorted(calls) == sorted(str(out / "received" / f"{d.SOPInstanceUID}.dcm") for d in later)
    listed = rows(out)
    assert sorted(row["SOPInstanceUID"] for row in listed) == sorted(
        d.SOPInstanceUID for d in [first, *later])
    assert len(rows(out, "scores.csv")) == 3
    assert len(list((out / "results").glob("*.dcm"))) == 3


def test_listen_command_runs_until_sigterm(tmp_path):
    """`pneumocnn listen` in its own process: stores and lists an X-ray sent to it, refuses a
    sender not allowed, and stops cleanly on SIGTERM."""
    port = free_port()
    command = [sys.executable, "-m", "pneumocnn", "listen", "--port", str(port), "--bind", LOCAL,
               "--ae-title", "TRIAGE", "--out", str(tmp_path / "node"), "--allow", "XRAY1",
               "--model", str(TINY_INT8), "--no-heatmaps"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        for line in process.stderr:
            if "listening on" in line:
                break
        assert send(port, [xray("NORMAL", 12)], called="TRIAGE") == [0]
        assert send(port, [xray("NORMAL", 13)], calling="XRAY2", called="TRIAGE") is None
        deadline = time.monotonic() + 60
        while not (tmp_path / "node" / "worklist.csv").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert len(rows(tmp_path / "node")) == 1
    assert "refused XRAY2@127.0.0.1: calling AE title 'XRAY2' is not allowed" in errors
    assert "stopped" in errors


def test_importing_pneumocnn_does_not_import_pynetdicom():
    code = textwrap.dedent("""
        import sys
        import pneumocnn, pneumocnn.cli
        print(any(m.split('.')[0] in ('pynetdicom', 'highdicom') for m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path, tiny):
    """Four senders, 30 X-rays each, one association per X-ray, into a node in its own process
    that is killed with SIGKILL mid-stream, then restarted in this one: every X-ray the node
    acknowledged is listed once, and scores.csv holds each stored object once."""
    out = tmp_path / "node"
    code = ("import sys; from pneumocnn.clinic.node import Node; import time; "
            "n = Node(sys.argv[1], sys.argv[2], port=0, host='127.0.0.1', heatmaps='none').start(); "
            "print(n.port, flush=True); time.sleep(3600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(out), str(TINY_INT8)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    port = int(process.stdout.readline())
    acknowledged: list[str] = []
    attempted = [0] * 4

    def sender(s: int) -> None:
        for k in range(30):
            dataset = xray("PNEUMONIA" if k % 2 else "NORMAL", (s * 30 + k) % 24)
            attempted[s] += 1
            try:
                if send(port, [dataset], calling=f"XRAY{s + 1}") == [0]:
                    acknowledged.append(dataset.SOPInstanceUID)
            except (ValueError, RuntimeError, OSError):  # the node is gone
                return

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 50:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for thread in threads:
        thread.join()
    stored = {path.stem for path in (out / "received").glob("*.dcm")}
    scored_before = len(rows(out, "scores.csv")) if (out / "scores.csv").exists() else 0
    with node(out, tiny) as scp:
        assert scp.wait_idle(300)
    listed = [row["SOPInstanceUID"] for row in rows(out)]
    assert set(acknowledged) <= set(listed) and len(listed) == len(set(listed)) == len(stored)
    files = [row["file"] for row in rows(out, "scores.csv")]
    assert len(files) == len(set(files)) == len(stored)
    print(f"\n{sum(attempted)} sends, {len(acknowledged)} acknowledged before the kill, "
          f"{len(stored)} stored, {scored_before} scored before the kill, {len(listed)} listed")
