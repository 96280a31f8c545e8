"""The DICOM node under hostile traffic: floods of silent, half-open, slow and malformed
connections, slots held by idle associations, objects streamed past the size limit, AE titles
holding newlines and terminal escapes. The node runs in a process of its own (its threads,
open files and memory read from /proc), every hostile connection is a raw socket on 127.0.0.1,
bounded in number and time, and an allowed sender must get in while they wait."""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the DICOM node needs pip install 'pneumocnn[dicom-net]'")
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads the node's threads and memory from /proc (Linux)")

from dicomnet import (  # noqa: E402
    LOCAL,
    NodeProcess,
    association_request,
    rows,
    send,
    store_command,
    wait_for,
    xray,
)
from helpers import TINY_INT8  # noqa: E402

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def enough_file_descriptors():
    """Hundreds of sockets here and in the node: the soft limit raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SENDER = "storescu" if shutil.which("storescu") else "pynetdicom"


def store(port: int, dataset, folder: Path) -> bool:
    """Store ``dataset`` as an X-ray unit would: with DCMTK's storescu (pynetdicom where DCMTK
    is absent); True if the node answered success."""
    if SENDER == "pynetdicom":
        return send(port, [dataset]) == [0]
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    done = subprocess.run(["storescu", "-v", "-aet", "XRAY1", "-aec", "PNEUMOCNN", LOCAL,
                           str(port), str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and "Received Store Response (Success)" in done.stdout + done.stderr


def connect(port: int) -> socket.socket:
    return socket.create_connection((LOCAL, port), timeout=10)


def associate(port: int, calling: bytes = b"XRAY1") -> socket.socket:
    """A raw association: the A-ASSOCIATE-RQ sent and the A-ASSOCIATE-AC read."""
    sock = connect(port)
    sock.sendall(association_request(calling))
    header = receive(sock, 6)
    assert header[0] == 0x02, f"not accepted: {header!r}"
    receive(sock, int.from_bytes(header[2:6], "big"))
    return sock


def receive(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def closed_by_node(sock: socket.socket, seconds: float) -> bytes:
    """What the node sent before closing ``sock``, if it closes it within ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def data_pdu(size: int = 16382) -> bytes:
    """A P-DATA-TF PDU of ``size`` bytes (the node's maximum) holding one data set fragment."""
    return (bytes([4, 0]) + size.to_bytes(4, "big") + (size - 4).to_bytes(4, "big")
            + bytes([1, 0]) + bytes(size - 6))


def test_an_allowed_sender_gets_in_while_hundreds_of_hostile_connections_wait(tmp_path):
    """While 300 connections sent a 6-byte PDU header and stopped, 60 said nothing, 40 sent
    random bytes, 30 trickled a request at 4 bytes/s, a thread opened 600 more half-open ones,
    and two associations held both slots without a word: an allowed sender stores three
    X-rays, each within 5 s; the node's threads stay bounded, the flood makes a few log lines
    and no traceback."""
    hostile: list[socket.socket] = []
    stop = threading.Event()
    with NodeProcess(tmp_path / "node", TINY_INT8, allow=["XRAY1"], max_associations=2) as scp:
        idle_threads = scp.status("Threads")
        rng = random.Random(7)

        def flood() -> None:  # 600 more half-open connections, at about 300 a second
            opened: list[socket.socket] = []
            for _ in range(600):
                if stop.is_set():
                    break
                with contextlib.suppress(OSError):
                    sock = connect(scp.port)
                    sock.sendall(association_request()[:6])
                    opened.append(sock)
                if len(opened) > 200:  # the node closed the oldest long ago
                    opened.pop(0).close()
                time.sleep(1 / 300)
            stop.wait()
            for sock in opened:
                sock.close()

        def trickle(slow: list[socket.socket]) -> None:  # a whole request, 4 bytes a second
            request = association_request()
            for at in range(0, len(request)):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.send(request[at : at + 1])
                if stop.wait(0.25):
                    return

        threads = []
        try:
            for _ in range(300):
                hostile.append(connect(scp.port))
                hostile[-1].sendall(association_request()[:6])
            hostile += [connect(scp.port) for _ in range(60)]
            for _ in range(40):
                hostile.append(connect(scp.port))
                hostile[-1].sendall(rng.randbytes(rng.randrange(1, 300)))
            slow = [connect(scp.port) for _ in range(30)]
            hostile += slow
            hostile += [associate(scp.port) for _ in range(2)]  # both slots, then silence
            threads = [threading.Thread(target=flood), threading.Thread(target=trickle, args=(slow,))]
            for thread in threads:
                thread.start()
            time.sleep(2.5)  # the silent associations are idle past the grace
            took, statuses = [], []
            for index in range(3):
                started = time.monotonic()
                statuses.append(store(scp.port, xray("NORMAL", index), tmp_path))
                took.append(time.monotonic() - started)
            busiest = scp.status("Threads")
            files = scp.open_files()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for sock in hostile:
                sock.close()
        wait_for(lambda: (tmp_path / "node" / "worklist.csv").exists()
                 and len(rows(tmp_path / "node")) == 3, 60, "three X-rays listed")
        log = scp.stop()
    print(f"\n{SENDER} sends took {[round(t, 2) for t in took]} s; threads idle {idle_threads}, "
          f"busiest {busiest}; open files {files}")
    assert statuses == [True] * 3 and max(took) < 5, (took, log[-3000:])
    assert busiest <= idle_threads + 12
    assert files < 256 + 64  # the waiting room, the slots and the node's own files
    assert "Traceback" not in log
    refusals = [line for line in log.splitlines() if "refused" in line]
    assert 2 <= len(refusals) <= 12, "\n".join(refusals)
    assert sum("dropped: idle" in line for line in log.splitlines()) == 1  # one slot freed


def test_objects_streamed_past_the_limit_are_dropped_as_they_arrive(tmp_path):
    """Five associations stream 200 MiB objects at once into a node taking at most 5 MiB an
    object: each is aborted as its data set crosses 5 MiB, the node's memory grows by a few
    times the limit at most (not by a gigabyte), and the next sender stores."""
    limit = 5 * MIB
    with NodeProcess(tmp_path / "node", TINY_INT8, max_object_mb=5) as scp:
        before = scp.status("VmRSS") * 1024
        sent = [0] * 5

        def stream(index: int) -> None:
            with associate(scp.port) as sock:
                sock.sendall(store_command())
                pdu = data_pdu()
                with contextlib.suppress(OSError):
                    while sent[index] < 200 * MIB:
                        sock.sendall(pdu)
                        sent[index] += len(pdu)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        peak = scp.status("VmHWM") * 1024
        assert send(scp.port, [xray("NORMAL", 1)]) == [0]
        log = scp.stop()
    received = [int(n.replace(",", "")) for n in re.findall(r"over the limit of 5,242,880 bytes "
                                                              r"\(([\d,]+) received\)", log)]
    print(f"\nsent before the abort {[round(n / MIB, 1) for n in sent]} MiB; node received "
          f"{[round(n / MIB, 2) for n in received]} MiB; RSS {before / MIB:.0f} -> peak "
          f"{peak / MIB:.0f} MiB")
    assert len(received) == 5 and all(limit < n <= limit + 16382 for n in received), log
    assert all(n < 40 * MIB for n in sent)
    assert peak - before < 8 * limit, (before, peak)


def test_each_phase_times_out_on_its_own_clock(tmp_path):
    """Short clocks (request 1 s, PDU 1 s, idle 2 s): a connection that says nothing, one that
    sends half a request, an association that starts a PDU and stops, and one silent after its
    A-ASSOCIATE-AC are each closed within a few seconds (the last two with an A-ABORT), with a
    line each in the log."""
    limits = {"request_seconds": 1.0, "pdu_seconds": 1.0, "idle_seconds": 2.0}
    with NodeProcess(tmp_path / "node", TINY_INT8, limits=limits) as scp:
        silent, half = connect(scp.port), connect(scp.port)
        half.sendall(association_request()[:40])
        started = time.monotonic()
        assert closed_by_node(silent, 5) == b"" and closed_by_node(half, 5) == b""
        assert time.monotonic() - started < 4
        stalled = associate(scp.port)
        stalled.sendall(store_command() + data_pdu()[:1000])  # a PDU of 16 kB, 1,000 bytes come
        started = time.monotonic()
        assert closed_by_node(stalled, 5)[:1] == b"\x07"  # A-ABORT
        assert time.monotonic() - started < 3
        quiet = associate(scp.port)
        started = time.monotonic()
        assert closed_by_node(quiet, 8)[:1] == b"\x07"
        assert 1.5 < time.monotonic() - started < 6
        log = scp.stop()
    assert log.count("refused 127.0.0.1: no whole A-ASSOCIATE-RQ within 1 s") == 1
    assert "refused 1 more time(s)" in log  # the second, summed up when the node stopped
    assert "dropped: no whole PDU within 1 s" in log
    assert "Network timeout reached" in log  # pynetdicom's, folded into the summary line
    assert "Traceback" not in log


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the sender's own bad UID
def test_refused_peers_are_logged_once_escaped_and_library_noise_is_folded(tmp_path):
    """AE titles holding a newline and a terminal escape are logged escaped; 100 connections of
    random bytes leave a line or two; an association sending a PDU of an unknown type and 60
    going on with random bytes after their A-ASSOCIATE-AC leave a line each, no traceback and
    no thread killed; an object whose Study Instance UID is invalid is refused with one
    line."""
    with NodeProcess(tmp_path / "node", TINY_INT8, allow=["XRAY1"],
                     limits={"idle_seconds": 2.0, "pdu_seconds": 2.0}) as scp:
        for calling, called in ((b"EVIL\nFORGED LINE", b"PNEUMOCNN"), (b"XRAY1", b"X\x1b[2J")):
            sock = connect(scp.port)
            sock.sendall(association_request(calling, called))
            assert closed_by_node(sock, 5)[:1] == b"\x03"  # A-ASSOCIATE-RJ
        rng = random.Random(11)
        for _ in range(100):
            with contextlib.suppress(OSError), connect(scp.port) as sock:
                sock.sendall(rng.randbytes(rng.randrange(1, 2000)))
        garbage = associate(scp.port)
        garbage.sendall(b"\x09\x00\x00\x00\x00\x10" + bytes(16))
        assert closed_by_node(garbage, 5)[:1] == b"\x07"
        for index in range(60):  # associations that go on with random bytes, some framed as
            with associate(scp.port) as fuzzed:  # P-DATA-TF PDUs holding one PDV each
                body = rng.randbytes(rng.randrange(2, 400))
                if index % 2:
                    body = (bytes([4, 0]) + (len(body) + 4).to_bytes(4, "big")
                            + len(body).to_bytes(4, "big") + body)
                fuzzed.sendall(body)
                closed_by_node(fuzzed, 10)
        assert send(scp.port, [xray("NORMAL", 2, StudyInstanceUID="1.2.abc")]) == [0xC000]
        log = scp.stop()
    lines = log.splitlines()
    print(f"\n{len(lines)} log lines for 100 random-byte connections, 2 hostile AE titles, 62 "
          f"associations and one object; {log.count('Traceback')} tracebacks")
    assert "refused EVIL\\x0aFORGED LINE@127.0.0.1: calling AE title" in log
    assert not any(line.startswith("FORGED") for line in lines)
    assert "\x1b" not in log, [line for line in lines if "\x1b" in line]
    assert "it called 'X\\x1b[2J'" in log
    assert "Traceback" not in log and "Exception in thread" not in log
    assert "pynetdicom" not in log.replace("pynetdicom said", "")
    assert sum("association with XRAY1@" in line for line in lines) == 62  # one line each
    assert len([line for line in lines if "127.0.0.1: its first bytes" in line]) <= 2
    assert "dropped: not a DICOM PDU (type 0x09)" in log
    study = [line for line in lines if "1.2.abc" in line]
    assert len(study) == 1 and "status 0xC000" in study[0] and "invalid StudyInstanceUID" in study[0]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_failed_tls_handshakes_are_logged(tmp_path):
    """A plain DICOM sender and a silent one at a TLS node: each refused with a line saying
    why; a TLS sender still stores."""
    import ssl

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    limits = {"request_seconds": 1.0}
    with NodeProcess(tmp_path / "node", TINY_INT8, tls=[str(cert), str(key)],
                     limits=limits) as scp:
        assert send(scp.port, [xray("NORMAL", 3)]) is None
        silent = connect(scp.port)
        assert closed_by_node(silent, 5) == b""
        client = ssl.create_default_context(cafile=str(cert))
        assert send(scp.port, [xray("NORMAL", 4)], tls=(client, LOCAL)) == [0]
        log = scp.stop()
    assert "TLS handshake failed (WRONG_VERSION_NUMBER: a sender without TLS?)" in log
    assert "(its TLS handshake unfinished)" in log
    assert os.path.exists(tmp_path / "node" / "received")
