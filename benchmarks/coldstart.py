"""Cold start and memory: a fresh Python process from ``import`` to the first answer.

Each child script notes the time before its first import, loads the model, scores one image
and prints the elapsed seconds and its peak RSS as JSON: ``VmHWM`` from
``/proc/self/status`` on Linux (``resource.getrusage``'s ``ru_maxrss`` elsewhere; on Linux a
child's ``ru_maxrss`` keeps the high-water mark of the parent it was forked from). The
parent also times the whole process (interpreter start-up and exit included). Runs alternate
between the kinds so all see the same machine state, after one untimed run of each: as on a
machine where the program has run before, its files are in the page cache and its bytecode
compiled (children may write bytecode even where ``PYTHONDONTWRITEBYTECODE`` is set, as pip
compiles it at install).

The kinds: pneumocnn (``pneumocnn.load(folder).predict(path)``, its choice of variant already
remembered, as on a user's machine after the first load); the *bare LiteRT* baseline, the least
any program pays to score the same file with the same model file and thread count (Pillow
decodes it to grayscale and resizes it, numpy scales it, a LiteRT interpreter runs it: no
checks, no normalisation, no calibration); and, when asked, the seed's Keras way. The ratios
of pneumocnn to the bare baseline (whole-process wall time, peak RSS; medians) are the
figures issue 28 asks for: at most 1.5x and 1.2x.

``python -m benchmarks.coldstart [--repeats 10] [--image FILE] [--keras]`` measures the
bundled models alone (no TensorFlow in the parent) and prints the table and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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

# What any program pays to score the file with LiteRT: decode, gray, resize, scale, invoke.
BARE = """
import time
start = time.perf_counter()
import json, os, sys
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=os.cpu_count())
interpreter.allocate_tensors()
tensor, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
_, height, width, channels = tensor["shape"]
with Image.open(sys.argv[2]) as image:
    gray = image.convert("L").resize((int(width), int(height)), Image.BILINEAR)
x = np.repeat((np.asarray(gray, np.float32) / 255)[None, ..., None], channels, axis=-1)
if tensor["dtype"] != np.float32:  # a full-integer model: quantize the input
    scale, zero = tensor["quantization"]
    x = np.clip(np.rint(x / scale + zero), -128, 127).astype(tensor["dtype"])
interpreter.set_tensor(tensor["index"], x)
interpreter.invoke()
answer = interpreter.get_tensor(output["index"]).astype(np.float64)
if output["dtype"] != np.float32:
    answer = (answer - output["quantization"][1]) * output["quantization"][0]
probability = float(answer[0, -1])
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
BARE_LITERT = "bare LiteRT (decode + invoke)"
KERAS_KIND = "Keras (TensorFlow float)"
KINDS = {OURS: PNEUMOCNN, BARE_LITERT: BARE, KERAS_KIND: KERAS}


def _child(script: str, model: Path, image: Path) -> dict:
    # as installed: Python may write bytecode (pip compiles it at install) for later runs to read
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, str(model), str(image)], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "process_wall_s": wall}


def cold_start(models_folder: Path, chosen: Path, keras: Path | None, image: Path,
               repeats: int) -> dict:
    """Per kind: every run's figures and their medians (and the largest peak RSS), and
    ``"vs_bare"``: pneumocnn's medians over the bare LiteRT baseline's. pneumocnn's child runs
    ``pneumocnn.load(models_folder)`` as a user's would once its choice of variant is
    remembered (the caller points ``PNEUMOCNN_CACHE_DIR`` at it); the bare child runs
    ``chosen``, the file of that choice; the Keras child runs ``keras`` (left out when None)."""
    models = {OURS: models_folder, BARE_LITERT: chosen, KERAS_KIND: keras}
    kinds = [kind for kind in KINDS if models[kind] is not None]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for kind in kinds:  # untimed: bytecode written, files in the page cache, as on a used machine
        _child(KINDS[kind], models[kind], image)
    for _ in range(repeats):
        for kind in kinds:
            runs[kind].append(_child(KINDS[kind], models[kind], image))
    summary: dict = {}
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
    ours, bare = summary[OURS], summary[BARE_LITERT]
    summary["vs_bare"] = {key: ours[key] / bare[key] for key in
                          ("median_process_wall_s", "median_s", "median_peak_rss_mb")}
    return summary


def table(cold: dict) -> list[str]:
    """The cold-start table and the ratios to the bare baseline, as markdown lines."""
    rows = [f"| {kind} | {c['median_s']:.3f} | {c['median_process_wall_s']:.3f} | "
            f"{c['median_peak_rss_mb']:.1f} | {c['max_peak_rss_mb']:.1f} | "
            f"{c['tensorflow_imported']} | {len(c['runs'])} |"
            for kind, c in cold.items() if kind != "vs_bare"]
    ratios = cold["vs_bare"]
    return ["| process | import to first answer s | whole process s | peak RSS MB (median) | "
            "peak RSS MB (max) | imports TensorFlow | runs |", "|---|---|---|---|---|---|---|",
            *rows, "",
            f"pneumocnn against the bare LiteRT process (medians, same runs): whole process "
            f"{ratios['median_process_wall_s']:.2f}x, import to first answer "
            f"{ratios['median_s']:.2f}x, peak RSS {ratios['median_peak_rss_mb']:.2f}x."]


def main(argv: list[str] | None = None) -> dict:
    """Measure the bundled models' cold start against the bare baseline; print the table."""
    import pneumocnn
    from benchmarks import BUNDLED_RUN, TEST_DATA

    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart",
                                     description=__doc__.split("\n\n")[2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--image", type=Path,
                        default=TEST_DATA / "full_resolution" / "NORMAL" / "NORMAL2-IM-0468-0001.jpeg")
    parser.add_argument("--keras", action="store_true", help="also the Keras way (slow)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pneumocnn-coldstart-") as cache:
        os.environ["PNEUMOCNN_CACHE_DIR"] = cache  # the choice made once, then remembered
        model = pneumocnn.load()
        cold = cold_start(pneumocnn.runtime.model.bundled_models(), Path(model.path),
                          BUNDLED_RUN / "model.keras" if args.keras else None, args.image,
                          args.repeats)
    print("\n".join(table(cold)))
    print(f"\nDefault choice: {model.variant}; image {args.image}; {args.repeats} runs each, "
          f"alternating; load average {os.getloadavg()[0]:.1f}.")
    return cold


if __name__ == "__main__":
    main(sys.argv[1:])
