"""pneumocnn.clinic.node: the DICOM node, driven by real pynetdicom SCUs in the test process
sending DICOM files made from the real X-rays in tests/data, to nodes on free localhost ports
(the shipped tiny int8 model; no TensorFlow)."""

from __future__ import annotations

import copy
import csv
import logging
import os
import shutil
import signal
import socket
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
from conftest import REPO, TINY_INT8, real_images  # noqa: E402
from dicomfiles import compressed, cut_codestream, dx_dataset  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom import uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom import association as association_module  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
)
from test_triage import page_data  # noqa: E402

import pneumocnn  # noqa: E402
from pneumocnn.clinic import structured_report  # noqa: E402
from pneumocnn.clinic.forward import Destination  # noqa: E402
from pneumocnn.clinic.node import Node  # noqa: E402

LOCAL = "127.0.0.1"
CONTEXTS = (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage)


@pytest.fixture(scope="module")
def tiny():
    return pneumocnn.load(TINY_INT8)


def xray(label: str = "PNEUMONIA", index: int = 0, cr: bool = False, **tags) -> pydicom.Dataset:
    """A frontal chest DX (or CR) data set of one of the real X-rays, in a study of its own."""
    with Image.open(real_images(label, 1, start=index)[0]) as image:
        pixels = np.asarray(image.convert("L"))
    tags = {"StudyInstanceUID": uid.generate_uid(), "SeriesInstanceUID": uid.generate_uid(),
            "PatientID": f"P{label[0]}{index}", "AccessionNumber": f"A{index}",
            "BodyPartExamined": "CHEST", "ViewPosition": "PA", **tags}
    dataset = dx_dataset(pixels, **tags)
    if cr:
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = \
            ComputedRadiographyImageStorage
        dataset.Modality = "CR"
    return dataset


def send(port: int, datasets, calling: str = "XRAY1", called: str = "PNEUMOCNN",
         contexts=CONTEXTS) -> list[int] | None:
    """C-STORE ``datasets`` in one association; the statuses (-1: no answer), or None if it
    was rejected."""
    ae = AE(ae_title=calling)
    for context in contexts:  # an SOP class, or (SOP class, transfer syntaxes)
        ae.add_requested_context(*(context if isinstance(context, tuple) else (context,)))
    association = ae.associate(LOCAL, port, ae_title=called)
    if not association.is_established:
        return None
    try:
        return [int(association.send_c_store(dataset).get("Status", -1)) for dataset in datasets]
    finally:
        association.release()


def rows(folder: Path, name: str = "worklist.csv") -> list[dict[str, str]]:
    with (folder / name).open(newline="") as stream:
        return list(csv.DictReader(stream))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return probe.getsockname()[1]


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


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the sender's own bad UID
def test_refusals_never_stop_the_node(tmp_path, tiny, caplog, monkeypatch):
    """Refused with a logged reason, and the node goes on storing: a calling AE title not on
    the allow-list, a wrong called AE title, a CT (context rejected), an object over the size
    limit, a malformed one, one whose data set names another SOP class than it was sent as; a
    lateral view is stored and listed apart by the guard."""
    caplog.set_level(logging.INFO, logger="pneumocnn.node")
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
        statuses = send(scp.port, [big, malformed, xray("NORMAL", 2, PatientID="CT"),
                                   xray("NORMAL", 1, PatientID="PATH"),
                                   xray("NORMAL", 5, ViewPosition="LL"), xray("NORMAL", 6)],
                        calling="XRAY2")
        assert statuses == [0xA700, 0xC000, 0xA900, 0xC000, 0, 0]
        assert scp.wait_idle(60)
    listed = rows(tmp_path / "node")
    assert len(listed) == 2 and listed[0]["label"] and "lateral view" in listed[1]["error"]
    assert len(list((tmp_path / "node" / "received").iterdir())) == 2
    assert len(list((tmp_path / "node" / "results").iterdir())) == 1  # no report unscored
    logged = caplog.text
    assert "rejected an association from INTRUDER@127.0.0.1: calling AE title not allowed" in logged
    assert "rejected an association from XRAY1@127.0.0.1: it called 'SOMEONE'" in logged
    assert "status 0xA700" in logged and "over the limit" in logged
    assert "status 0xC000" in logged and "cannot parse" in logged
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
    caplog.set_level(logging.INFO, logger="pneumocnn.node")
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
    caplog.set_level(logging.INFO, logger="pneumocnn.node")
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
    assert "rejected an association from XRAY2@" in errors and "stopped" in errors


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
