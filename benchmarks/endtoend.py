"""End to end on full-size X-ray files: path in, answer out.

Paths compared, interleaved per file (random order) after one warm-up pass:

- ``pneumocnn``: ``Model.predict(path)`` on the int8 model (what ``pneumocnn.predict`` runs);
- ``floor``: pneumocnn's decode-and-resize alone (``load_pixels``: reduced-scale JPEG decode,
  grayscale, resize), the part no model can avoid;
- ``naive decode``: full-size PIL decode, RGB conversion and resize, no model;
- ``naive``: that decode, scaling, and Keras ``model.predict`` on the float model.

Each pass over the files gives one total per path; figures are medians over passes.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pneumocnn
from pneumocnn.core.preprocessing import load_pixels

PATHS = {
    "pneumocnn": "pneumocnn Model.predict(path), LiteRT int8",
    "floor": "decode + resize only (pneumocnn load_pixels)",
    "naive decode": "full PIL decode + resize only",
    "naive": "full PIL decode + resize + Keras model.predict",
}


def end_to_end(files: list[Path], tflite: Path, keras_model, passes: int, seed: int = 2) -> dict:
    """Per path: total seconds of each pass, median ms per image, images per second."""
    model = pneumocnn.load(tflite)
    spec = model.description.preprocessing
    size = (spec.width, spec.height)

    def naive_pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize(size), dtype=np.float32) / 255.0

    calls = {
        "pneumocnn": lambda path: model.predict(path),
        "floor": lambda path: load_pixels(path, spec),
        "naive decode": naive_pixels,
        "naive": lambda path: keras_model.model.predict(naive_pixels(path)[None], verbose=0),
    }
    for call in calls.values():
        call(files[0])  # warm-up
    rng = np.random.default_rng(seed)
    per_image = {name: [] for name in calls}
    totals = {name: [] for name in calls}
    names = list(calls)
    gc.collect()
    gc.disable()
    try:
        for _ in range(passes):
            spent = dict.fromkeys(names, 0.0)
            for path in files:
                for k in rng.permutation(len(names)):
                    start = time.perf_counter()
                    calls[names[k]](path)
                    elapsed = time.perf_counter() - start
                    spent[names[k]] += elapsed
                    per_image[names[k]].append(elapsed)
            for name in names:
                totals[name].append(spent[name])
    finally:
        gc.enable()
    results = {}
    for name in names:
        total = float(np.median(totals[name]))
        results[name] = {"label": PATHS[name], "files": len(files), "passes": passes,
                         "pass_seconds": totals[name], "median_pass_s": total,
                         "median_ms_per_image": float(np.median(per_image[name]) * 1000),
                         "images_per_s": len(files) / total}
    return results
