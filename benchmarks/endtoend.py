"""End to end on full-size X-ray files: path in, answer out.

Paths compared, interleaved per file (random order) after one warm-up pass:

- ``pneumocnn``: ``Model.predict(path)`` on the default model, ``pneumocnn.load(folder)`` with
  all cores (what ``pneumocnn.predict`` runs; the variant it chose is in the label);
- ``decode+invoke``: the floor any LiteRT caller pays for the same model file: pneumocnn's
  ``load_pixels`` (decode, grayscale, resize, normalise), that image scaled to the model input
  (``to_model_input``, then quantized when the input tensor is an integer one), and the bare
  ``set_tensor``, ``invoke``, ``get_tensor`` on an interpreter of its own over the same file and
  threads;
- ``floor``: pneumocnn's decode-and-resize alone (``load_pixels``), the part no model can avoid;
- ``floor, no crop``: for a model that declares a margin crop, the same without it: beside
  ``floor``, what the crop costs;
- ``naive decode``: full-size PIL decode, RGB conversion and resize, no model;
- ``naive``: that decode, scaling, and Keras ``model.predict`` on the float model.

Each pass over the files gives one total per path; figures are medians over passes. In each
pass, before or after the single-file calls (alternately), ``folder`` times one
``model.predict(list_of_files)`` call, which decodes on all cores while the interpreter runs:
its images per second against the single-file calls' show that overlap.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.preprocessing import Preprocessing, load_pixels, to_model_input

LABELS = {
    "pneumocnn": "pneumocnn Model.predict(path), default load() ({variant})",
    "decode+invoke": "decode + preprocess + bare LiteRT invoke, same file ({variant})",
    "floor": "decode + resize only (pneumocnn load_pixels)",
    "floor, no crop": "decode + resize only, without the model's margin crop",
    "naive decode": "full PIL decode + resize only",
    "naive": "full PIL decode + resize + Keras model.predict",
    "folder": "pneumocnn Model.predict(list of all files), default load() ({variant})",
}


def litert_caller(path: Path, spec: Preprocessing, threads: int) -> Callable[[np.ndarray], float]:
    """What any LiteRT caller runs on one image's uint8 pixels: scale them to the model input,
    quantize them for an integer input tensor, ``set_tensor``, ``invoke``, ``get_tensor``; on an
    interpreter of its own over the file. Returns the raw output's last value."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=path.read_bytes(), num_threads=threads)
    interpreter.allocate_tensors()
    tensor, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    dtype = np.dtype(tensor["dtype"])
    scale, zero = tensor["quantization"]

    def call(pixels: np.ndarray) -> float:
        x = to_model_input(pixels, spec)[np.newaxis]
        if dtype != np.float32:
            limits = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), limits.min, limits.max).astype(dtype)
        interpreter.set_tensor(tensor["index"], x)
        interpreter.invoke()
        return float(interpreter.get_tensor(output["index"]).reshape(-1)[-1])

    return call


def end_to_end(files: list[Path], model, keras_model, passes: int, seed: int = 2) -> dict:
    """Per path: total seconds of each pass, median ms per image, images per second. ``model``
    is the default ``pneumocnn.Model`` (loaded from a folder: ``model.variant`` says which)."""
    spec = model.description.preprocessing
    size = (spec.width, spec.height)
    variant = model.variant.variant if model.variant else model.description.info.get("quantization", "?")
    bare = litert_caller(Path(model.path), spec, getattr(model.backend, "threads", None) or 1)

    def naive_pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize(size), dtype=np.float32) / 255.0

    calls = {
        "pneumocnn": lambda path: model.predict(path),
        "decode+invoke": lambda path: bare(load_pixels(path, spec)),
        "floor": lambda path: load_pixels(path, spec),
        "naive decode": naive_pixels,
        "naive": lambda path: keras_model.model.predict(naive_pixels(path)[None], verbose=0),
    }
    if spec.crop != "none":
        uncropped = replace(spec, crop="none")
        calls["floor, no crop"] = lambda path: load_pixels(path, uncropped)
    for call in calls.values():
        call(files[0])  # warm-up
    model.predict(files[:2])  # warm-up of the folder path (its thread pool)
    rng = np.random.default_rng(seed)
    per_image = {name: [] for name in calls}
    totals = {name: [] for name in [*calls, "folder"]}
    names = list(calls)
    gc.collect()
    gc.disable()
    try:
        for index in range(passes):
            if index % 2:
                totals["folder"].append(_timed(model.predict, files))
            spent = dict.fromkeys(names, 0.0)
            for path in files:
                for k in rng.permutation(len(names)):
                    elapsed = _timed(calls[names[k]], path)
                    spent[names[k]] += elapsed
                    per_image[names[k]].append(elapsed)
            for name in names:
                totals[name].append(spent[name])
            if not index % 2:
                totals["folder"].append(_timed(model.predict, files))
    finally:
        gc.enable()
    results = {}
    for name, passed in totals.items():
        total = float(np.median(passed))
        ms = np.median(per_image[name]) * 1000 if name in per_image else total * 1000 / len(files)
        results[name] = {"label": LABELS[name].format(variant=variant), "files": len(files),
                         "passes": passes, "pass_seconds": passed, "median_pass_s": total,
                         "median_ms_per_image": float(ms), "images_per_s": len(files) / total}
    results["folder"]["vs_single_calls"] = (results["pneumocnn"]["median_pass_s"]
                                            / results["folder"]["median_pass_s"])
    return results


def _timed(call: Callable, argument) -> float:
    start = time.perf_counter()
    call(argument)
    return time.perf_counter() - start
