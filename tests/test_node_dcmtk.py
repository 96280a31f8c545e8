"""The DICOM node and clients no one here wrote: DCMTK's echoscu, storescu and dcmsend (Debian's
dcmtk; .ci/run installs it), on nodes on free localhost ports, sending DICOM files made from the
real X-rays in tests/data in the transfer syntaxes X-ray units and PACS use, plain and over TLS."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the DICOM node needs pip install 'pneumocnn[dicom-net]'")
MISSING = [tool for tool in ("echoscu", "storescu", "dcmsend") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"DCMTK is not installed ({', '.join(MISSING)} "
                                                      "missing): apt-get install dcmtk")

import pydicom  # noqa: E402
from dicomfiles import HAVE_PYJPEGLS, compressed, uncompressed  # noqa: E402
from dicomnet import LOCAL, rows, xray  # noqa: E402
from helpers import TINY_INT8  # noqa: E402
from pydicom import uid  # noqa: E402
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # noqa: E402

import pneumocnn  # noqa: E402
from pneumocnn.clinic.node import Node, tls_context  # noqa: E402

SYNTAXES = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian,
            uid.DeflatedExplicitVRLittleEndian, uid.JPEGBaseline8Bit, uid.JPEGLosslessSV1,
            uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
            *([uid.JPEGLSLossless] if HAVE_PYJPEGLS else [])]


@pytest.fixture(scope="module")
def tiny():
    return pneumocnn.load(TINY_INT8)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def node(out: Path, model, **options) -> Node:
    return Node(out, model, port=0, host=LOCAL, allow=["XRAY1"], heatmaps="none", **options)


def dcmtk(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_echoscu_plain_and_over_tls(tmp_path, tiny, certificate, caplog):
    """echoscu, an administrator's first test of a new node, succeeds plain and over TLS; a
    plain echo at the TLS node fails, and the node logs why."""
    caplog.set_level(logging.INFO, logger="pneumocnn")
    cert, key = certificate
    with node(tmp_path / "plain", tiny) as plain, \
            node(tmp_path / "tls", tiny, tls=tls_context(cert, key)) as tls:
        echo = dcmtk("echoscu", "-aet", "XRAY1", "-aec", "PNEUMOCNN", LOCAL, str(plain.port))
        assert echo.returncode == 0, echo.stderr
        echo = dcmtk("echoscu", "-aet", "XRAY1", "-aec", "PNEUMOCNN", "+tla", "+cf", str(cert),
                     LOCAL, str(tls.port))
        assert echo.returncode == 0, echo.stderr
        assert dcmtk("echoscu", "-aet", "XRAY1", "-aec", "PNEUMOCNN", LOCAL,
                     str(tls.port)).returncode != 0
        stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "PNEUMOCNN", LOCAL, str(plain.port))
        assert stranger.returncode != 0
        assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    assert caplog.text.count("1 echo: released") == 2
    assert "TLS handshake failed (WRONG_VERSION_NUMBER: a sender without TLS?)" in caplog.text


def test_dcmsend_and_storescu_in_the_transfer_syntaxes_units_use(tmp_path, tiny):
    """dcmsend (never decompressing: each compressed file goes in its own transfer syntax or
    not at all) stores a DX in every common transfer syntax and a Secondary Capture stating CR;
    storescu stores one proposing Implicit VR only. Each compressed file is stored in the syntax
    it was sent in (an uncompressed one in the uncompressed syntax negotiated) and scored as
    predict scores the file sent."""
    files = []
    for index, syntax in enumerate(SYNTAXES):
        dataset = xray("PNEUMONIA" if index % 2 else "NORMAL", index)
        dataset = (compressed(dataset, syntax) if syntax.is_compressed
                   else uncompressed(dataset, syntax))
        files.append(tmp_path / f"{syntax.keyword}.dcm")
        dataset.save_as(files[-1], enforce_file_format=True)
    secondary = xray("PNEUMONIA", 20, Modality="CR")
    secondary.SOPClassUID = secondary.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    files.append(tmp_path / "secondary-capture.dcm")
    secondary.save_as(files[-1], enforce_file_format=True)
    implicit, over_tls = tmp_path / "implicit.dcm", tmp_path / "tls.dcm"
    xray("NORMAL", 21).save_as(implicit, enforce_file_format=True)
    xray("PNEUMONIA", 22).save_as(over_tls, enforce_file_format=True)
    with node(tmp_path / "node", tiny) as scp:
        sent = dcmtk("dcmsend", "-aet", "XRAY1", "-aec", "PNEUMOCNN", "-dn", LOCAL, str(scp.port),
                     *map(str, files))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = dcmtk("storescu", "-aet", "XRAY1", "-aec", "PNEUMOCNN", "-xi", LOCAL,
                       str(scp.port), str(implicit))
        assert stored.returncode == 0, stored.stderr
        assert scp.wait_idle(60)
    listed = {row["SOPInstanceUID"]: row for row in rows(tmp_path / "node")}
    assert len(listed) == len(files) + 1 and not any(row["error"] for row in listed.values())
    for path in [*files, implicit]:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        received = tmp_path / "node" / "received" / f"{original.SOPInstanceUID}.dcm"
        syntax = pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if original.file_meta.TransferSyntaxUID.is_compressed:
            assert syntax == original.file_meta.TransferSyntaxUID, path.name
        if path == implicit:
            assert syntax == uid.ImplicitVRLittleEndian
        assert float(listed[original.SOPInstanceUID]["probability"]) == pytest.approx(
            tiny.predict(path).probability, abs=1e-6), path.name


def test_storescu_over_tls(tmp_path, tiny, certificate):
    cert, key = certificate
    path = tmp_path / "tls.dcm"
    dataset = xray("PNEUMONIA", 23)
    dataset.save_as(path, enforce_file_format=True)
    with node(tmp_path / "node", tiny, tls=tls_context(cert, key)) as scp:
        stored = dcmtk("storescu", "-aet", "XRAY1", "-aec", "PNEUMOCNN", "+tla", "+cf", str(cert),
                       LOCAL, str(scp.port), str(path))
        assert stored.returncode == 0, stored.stderr
        assert scp.wait_idle(60)
    (row,) = rows(tmp_path / "node")
    assert row["SOPInstanceUID"] == dataset.SOPInstanceUID and row["label"]
