"""Cold start and memory: a fresh Python process from ``import`` to the first answer.

Each child script notes the time before its first import, loads the model, scores one image
and prints the elapsed seconds and its peak RSS as JSON: ``VmHWM`` from
``/proc/self/status`` on Linux (``resource.getrusage``'s ``ru_maxrss`` elsewhere; on Linux a
child's ``ru_maxrss`` keeps the high-water mark of the parent it was forked from). The
parent also times the whole process (interpreter start-up and exit included). Runs alternate
between the two kinds so both see the same machine state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_REPORT = """
seconds = time.perf_counter() - start
try:  # VmHWM: ru_maxrss of a child can report its parent's size (Linux keeps it across exec)
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
except (OSError, IndexError):
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "probability": probability,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""

PNEUMOCNN = """
import time
start = time.perf_counter()
import json, sys
import pneumocnn
probability = pneumocnn.load(sys.argv[1]).predict(sys.argv[2]).probability
""" + _REPORT

# The seed's and most tutorials' way: tf.keras load_model, load_img, predict.
KERAS = """
import time
start = time.perf_counter()
import json, sys
import tensorflow as tf
model = tf.keras.models.load_model(sys.argv[1], compile=False)
image = tf.keras.utils.load_img(sys.argv[2], target_size=model.input_shape[1:3])
x = tf.keras.utils.img_to_array(image)[None] / 255.0
probability = float(model.predict(x, verbose=0)[0, -1])
""" + _REPORT

OURS = "pneumocnn (LiteRT, default load())"
KINDS = {OURS: PNEUMOCNN, "Keras (TensorFlow float)": KERAS}


def _child(script: str, model: Path, image: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, str(model), str(image)], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "process_wall_s": wall}


def cold_start(models_folder: Path, keras: Path, image: Path, repeats: int) -> dict:
    """Per kind: every run's figures and their medians (and the largest peak RSS).
    pneumocnn's child runs ``pneumocnn.load(models_folder)`` as a user's would once its
    choice of variant is remembered (the caller points ``PNEUMOCNN_CACHE_DIR`` at it)."""
    models = {OURS: models_folder, "Keras (TensorFlow float)": keras}
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind, script in KINDS.items():
            runs[kind].append(_child(script, models[kind], image))
    summary = {}
    for kind, rows in runs.items():
        summary[kind] = {
            "runs": rows,
            "model": str(models[kind]),
            "image": str(image),
            "median_s": float(np.median([r["seconds"] for r in rows])),
            "median_process_wall_s": float(np.median([r["process_wall_s"] for r in rows])),
            "median_peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in rows])),
            "max_peak_rss_mb": float(max(r["peak_rss_mb"] for r in rows)),
            "tensorflow_imported": any(r["tensorflow_imported"] for r in rows),
        }
    return summary
