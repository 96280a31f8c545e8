"""Peak memory of the DICOM node receiving and scoring one very large X-ray.

A node (``pneumocnn.clinic.node.Node``, the bundled model, heatmaps on: the defaults of
``pneumocnn listen``) runs in a process of its own; a 7,000 x 7,000 16-bit DX (93 MiB of pixel
data, under the default 100 MiB object limit) made from a real X-ray of ``tests/data`` is sent to
it by DCMTK's ``storescu`` (or, where DCMTK is absent, a pynetdicom SCU in this process), and
the node's peak RSS (``VmHWM`` of ``/proc/PID/status``, Linux) is read once the object is
scored and listed, beside its RSS when idle before the send. Printed as JSON.

    python -m benchmarks.node_memory                    # from the repository root
    python -m benchmarks.node_memory --repo ../main     # another checkout's node
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIDE = 7000
_NODE = """
import sys, time
from pneumocnn.clinic.node import Node
node = Node(sys.argv[1], port=0, host="127.0.0.1").start()
print(node.port, flush=True)
time.sleep(3600)
"""


def _status(pid: int, field: str) -> float:
    """A ``VmHWM``/``VmRSS``-like field of ``/proc/PID/status``, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0]) / 1024


def large_xray(path: Path, side: int = SIDE) -> Path:
    """A ``side`` x ``side`` 16-bit DX made by enlarging a real X-ray of tests/data."""
    import pydicom
    from PIL import Image
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    source = REPO / "tests/data/full_resolution/NORMAL/NORMAL2-IM-0468-0001.jpeg"
    with Image.open(source) as image:
        small = np.asarray(image.convert("L").resize((side, side), Image.Resampling.BILINEAR))
    pixels = small.astype(np.uint16) * 16 + 8  # 12 bits stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = (meta.MediaStorageSOPClassUID,
                                                   meta.MediaStorageSOPInstanceUID)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    dataset.Modality, dataset.BodyPartExamined, dataset.ViewPosition = "DX", "CHEST", "PA"
    dataset.PatientID = "MEMORY"
    dataset.Rows = dataset.Columns = side
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    del pixels, small
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path


def _send(path: Path, port: int) -> None:
    if shutil.which("storescu"):
        subprocess.run(["storescu", "-aec", "PNEUMOCNN", "127.0.0.1", str(port), str(path)],
                       check=True, capture_output=True, timeout=600)
        return
    import pydicom
    from pynetdicom import AE

    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="MEMORY")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="PNEUMOCNN")
    status = association.send_c_store(dataset)
    association.release()
    if int(status.get("Status", -1)) != 0:
        raise RuntimeError(f"the node answered {status}")


def measure(side: int = SIDE, repo: Path = REPO) -> dict:
    """Start a node of the checkout ``repo``, send it the large X-ray, wait for its row; the
    node's memory figures."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        xray = large_xray(folder / "large.dcm", side)
        out = folder / "node"
        node = subprocess.Popen([sys.executable, "-c", _NODE, str(out)], stdout=subprocess.PIPE,
                                text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
        try:
            port = int(node.stdout.readline())
            time.sleep(1.0)
            idle = _status(node.pid, "VmRSS")
            started = time.perf_counter()
            _send(xray, port)
            acknowledged = time.perf_counter() - started
            while not (out / "worklist.csv").exists() or len(
                    (out / "worklist.csv").read_text().splitlines()) < 2:
                if node.poll() is not None:
                    raise RuntimeError("the node stopped")
                time.sleep(0.1)
            scored = time.perf_counter() - started
            peak = _status(node.pid, "VmHWM")
            row = (out / "worklist.csv").read_text().splitlines()[1]
        finally:
            node.terminate()
            node.wait(60)
        return {"repo": str(repo), "object_mib": round(xray.stat().st_size / 2**20, 1), "side": side,
                "node_idle_rss_mib": round(idle, 1), "node_peak_rss_mib": round(peak, 1),
                "seconds_to_acknowledge": round(acknowledged, 2),
                "seconds_to_score": round(scored, 2), "worklist_row": row,
                "sender": "storescu" if shutil.which("storescu") else "pynetdicom"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=SIDE, help="rows = columns of the X-ray")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose node to run")
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.side, arguments.repo.resolve()), indent=2))


if __name__ == "__main__":
    main()
