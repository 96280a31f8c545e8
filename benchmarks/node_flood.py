"""A DICOM node under a flood of half-open connections: does an X-ray unit still get in?

A node (``pneumocnn.clinic.node.Node`` from the checkout given, default this one; the tiny test
model) runs in a process of its own on 127.0.0.1; 300 connections send the 6-byte header of an
A-ASSOCIATE-RQ and stop, 60 more say nothing; then DCMTK's ``storescu`` (which must be
installed) stores one X-ray. Printed as JSON: the node's threads idle and under the flood (from
``/proc``, Linux), and whether and how fast the store went through.

    python -m benchmarks.node_flood                    # this checkout
    python -m benchmarks.node_flood --repo ../main     # another one, e.g. before a change
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.node_memory import large_xray

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests/data/tiny-int8.tflite"
_NODE = """
import sys, time
from pneumocnn.clinic.node import Node
node = Node(sys.argv[1], sys.argv[2], port=0, host="127.0.0.1", heatmaps="none").start()
print(node.port, flush=True)
time.sleep(3600)
"""


def association_request(calling: bytes = b"XRAY1", called: bytes = b"PNEUMOCNN",
                        sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1",
                        syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """The bytes of an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing one presentation context
    (default: DX for presentation, Explicit VR Little Endian); AE titles as raw bytes (a
    hostile peer's may hold anything)."""
    def item(kind: int, body: bytes) -> bytes:
        return bytes([kind, 0]) + len(body).to_bytes(2, "big") + body

    context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, sop_class.encode())
                   + item(0x40, syntax.encode()))
    user = item(0x50, item(0x51, (16384).to_bytes(4, "big")) + item(0x52, b"1.2.3.4"))
    body = ((1).to_bytes(2, "big") + b"\0\0" + called.ljust(16)[:16] + calling.ljust(16)[:16]
            + bytes(32) + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return bytes([1, 0]) + len(body).to_bytes(4, "big") + body


def _threads(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("Threads:")[1].split()[0])


def measure(repo: Path = REPO, half_open: int = 300, silent: int = 60) -> dict:
    """Flood a node of ``repo`` and store one X-ray through it with storescu."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        xray = large_xray(folder / "xray.dcm", side=512)
        node = subprocess.Popen([sys.executable, "-c", _NODE, str(folder / "node"), str(MODEL)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
        hostile: list[socket.socket] = []
        try:
            port = int(node.stdout.readline())
            idle = _threads(node.pid)
            for count in range(half_open + silent):
                with contextlib.suppress(OSError):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    hostile.append(sock)
                    if count < half_open:
                        sock.sendall(association_request()[:6])
            time.sleep(1.0)
            flooded = _threads(node.pid)
            started = time.perf_counter()
            done = subprocess.run(["storescu", "-v", "-to", "60", "-ta", "60", "-aec",
                                   "PNEUMOCNN", "127.0.0.1", str(port), str(xray)],
                                  capture_output=True, text=True, timeout=300)
            seconds = time.perf_counter() - started
        finally:
            for sock in hostile:
                sock.close()
            node.kill()
            node.wait()
        said = (done.stdout + done.stderr).strip().splitlines()
        stored = done.returncode == 0 and any("(Success)" in line for line in said)
        return {"repo": str(repo), "hostile_connections": len(hostile),
                "node_threads_idle": idle, "node_threads_flooded": flooded,
                "storescu_stored": stored, "storescu_seconds": round(seconds, 2),
                "storescu_last_line": said[-1] if said else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose node to run")
    print(json.dumps(measure(parser.parse_args().repo.resolve()), indent=2))


if __name__ == "__main__":
    main()
