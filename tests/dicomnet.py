"""Helpers for the DICOM node's tests: X-ray data sets made from the real X-rays in tests/data,
a pynetdicom SCU, raw A-ASSOCIATE-RQ bytes, and a node in a process of its own whose log,
threads and memory the tests read."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from dicomfiles import dx_dataset
from helpers import REPO, real_images
from PIL import Image
from pydicom import uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
)

from benchmarks.node_flood import association_request  # noqa: F401 (the tests' too)

LOCAL = "127.0.0.1"
CONTEXTS = (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage)


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
         contexts=CONTEXTS, tls=None) -> list[int] | None:
    """C-STORE ``datasets`` in one association; the statuses (-1: no answer), or None if it
    was rejected. ``contexts``: SOP classes, or (SOP class, transfer syntaxes) pairs."""
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(*(context if isinstance(context, tuple) else (context,)))
    association = ae.associate(LOCAL, port, ae_title=called, tls_args=tls)
    if not association.is_established:
        return None
    try:
        return [int(association.send_c_store(dataset).get("Status", -1)) for dataset in datasets]
    finally:
        association.release()


def rows(folder: Path, name: str = "worklist.csv") -> list[dict[str, str]]:
    with (folder / name).open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return probe.getsockname()[1]


def store_command(sop_class: str = DigitalXRayImageStorageForPresentation,
                  instance: str = "1.2.3.4") -> bytes:
    """A P-DATA-TF PDU holding the whole command set of a C-STORE-RQ (presentation context 1):
    what a sender sends before the object's data set."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    command = Dataset()
    command.AffectedSOPClassUID, command.AffectedSOPInstanceUID = sop_class, instance
    command.CommandField, command.MessageID, command.Priority = 0x0001, 1, 0
    command.CommandDataSetType = 0x0000
    body = encode(command, True, True)
    body = b"\0\0\0\0" + (4).to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
    item = (len(body) + 2).to_bytes(4, "big") + bytes([1, 0x03]) + body
    return bytes([4, 0]) + len(item).to_bytes(4, "big") + item


# a node in its own process: started with the options given as JSON, logging to stderr, stopped
# by SIGTERM
_NODE = """
import json, logging, signal, sys, threading
from pneumocnn.clinic.gate import Limits
from pneumocnn.clinic.node import Node, tls_context
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
logging.getLogger("pneumocnn").setLevel(logging.INFO)
logging.captureWarnings(True)
options = json.loads(sys.argv[3])
limits = Limits(**options.pop("limits", {}))
tls = options.pop("tls", None)
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
node = Node(sys.argv[1], sys.argv[2], port=0, host="127.0.0.1", heatmaps="none", limits=limits,
            tls=tls_context(*tls) if tls else None, **options).start()
print(node.port, flush=True)
stopping.wait()
node.stop()
"""


class NodeProcess:
    """A node in a process of its own (Linux: its threads and memory are read from /proc)."""

    def __init__(self, out: Path, model: Path, **options) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, "-c", _NODE, str(out), str(model), json.dumps(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.port = int(self.process.stdout.readline())
        self.log = ""

    def status(self, field: str) -> int:
        """A field of /proc/PID/status as a number (``Threads``; ``VmRSS``/``VmHWM`` in kB)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(text.split(f"{field}:")[1].split()[0])

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> str:
        """Stop the node; its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, self.log = self.process.communicate(timeout=60)
        return self.log

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(condition, seconds: float, what: str) -> None:
    """Poll ``condition`` until true, or fail after ``seconds`` saying ``what`` was awaited."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)
