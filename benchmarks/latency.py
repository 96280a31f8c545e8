"""Batch-1 latency and batch-32 throughput of each variant, timed alone in turns after warm-up.

Each variant is timed alone, in blocks of consecutive calls cycling through the same X-rays (as
a program that scores a stream of X-rays with one model runs it), the variants taking turns in a fresh
random order in each of 20 turns: slow drifts of a noisy machine (other processes, frequency
changes) reach every variant alike, and no variant is charged for what another left behind.
Timed call by call in one loop, the variants did charge each other: ONNX Runtime's worker
threads spin for a while after each run, holding a core; a multi-threaded LiteRT interpreter
whose workers went to sleep meanwhile wakes them again; each model evicts the others' data
from the caches. The garbage collector is off while timing, as in ``timeit``.

``python -m benchmarks.latency [FOLDER_OR_FILE ...] [--threads 1 2] [--rounds 300] [--peers RUN]``
times the ``.tflite`` files given (default: the bundled ``pneumocnn/models``) alone, without
TensorFlow: each at each thread count through pneumocnn (``load(path).probabilities``, the path
``predict`` takes) and as a bare interpreter call; for each folder given, also what
``pneumocnn.load(folder)`` chooses there; with ``--peers RUN``, ONNX Runtime float32 and static
int8 made from ``RUN/model.keras`` as the full benchmark makes them (TensorFlow needed; the int8
calibrated on the X-rays timed). All on real X-rays (``tests/data/xrays``); it prints a markdown
table and, with ``--out DIR``, writes ``DIR/latency.{md,json}``. What to run on a CPU class to
see which variant wins there, and against which peer.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks.variants import Variant


def summarize(seconds: list[float]) -> dict:
    """Median, p95, mean and min in milliseconds, and the number of calls."""
    ms = np.asarray(seconds) * 1000.0
    return {"n": int(ms.size), "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int,
                seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each named callable: ``warmup`` untimed calls each, then ``rounds``
    rounds of one timed call each, in a random order per round."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for k in rng.permutation(len(names)):
                call = calls[names[k]]
                start = time.perf_counter()
                call()
                times[names[k]].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def _cycling(variant: Variant, inputs: np.ndarray, batch: int, bare: bool = False) -> Callable[[], object]:
    """A call that runs ``variant`` on the next ``batch`` inputs (cycling through them)."""
    starts = list(range(0, max(len(inputs) - batch + 1, 1), batch))
    state = {"i": 0}
    run = variant.bare if bare else variant.run

    def call():
        start = starts[state["i"] % len(starts)]
        state["i"] += 1
        return run(inputs[start:start + batch])

    return call


def in_turns(calls: dict[str, Callable[[], object]], rounds: int, warmup: int,
             seed: int = 0, turns: int = 20) -> dict[str, list[float]]:
    """Seconds per call of each named callable, each timed alone: in each of ``turns`` turns,
    the callables in a fresh random order each make a block of about ``rounds / turns``
    consecutive timed calls, after ``warmup`` untimed calls (a fifth of that, at least 1, in
    later turns)."""
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    turns = max(1, min(turns, rounds))
    for turn in range(turns):
        block = rounds // turns + (turn < rounds % turns)
        warm = warmup if turn == 0 else max(1, warmup // 5)
        for k in rng.permutation(len(names)):
            times[names[k]] += interleaved({names[k]: calls[names[k]]}, block, warm)[names[k]]
    return times


def batch1_latency(variants: list[Variant], inputs: np.ndarray, rounds: int, warmup: int) -> dict:
    """Per variant key: every batch-1 call's seconds and their summary; LiteRT variants also
    under ``KEY:bare``, their interpreter call alone, timed the same way."""
    calls = {v.key: _cycling(v, inputs, 1) for v in variants if v.run is not None}
    calls |= {f"{v.key}:bare": _cycling(v, inputs, 1, bare=True) for v in variants if v.bare}
    times = in_turns(calls, rounds, warmup)
    return {key: {"seconds": t, **summarize(t)} for key, t in times.items()}


def throughput(variants: list[Variant], inputs: np.ndarray, rounds: int, warmup: int,
               batch: int = 32) -> dict:
    """Per variant key: seconds of each batch-``batch`` call and images per second at the median."""
    batch = min(batch, len(inputs))
    calls = {v.key: _cycling(v, inputs, batch) for v in variants if v.run is not None}
    times = in_turns(calls, rounds, warmup, seed=1)
    return {key: {"batch": batch, "seconds": t, **summarize(t),
                  "images_per_s": batch / float(np.median(t))} for key, t in times.items()}


def variant_latency(files: list[Path], threads: list[int], rounds: int, warmup: int,
                    folders: list[Path] | None = None, peers: Path | None = None) -> dict:
    """Per variant and thread count: the median, p95 and min ms of one answer on the shipped
    X-rays, timed by :func:`batch1_latency`. The variants: each file through pneumocnn
    (``load(path).probabilities``, also timed as a bare interpreter call); for each of
    ``folders``, what ``pneumocnn.load(folder)`` chooses (afresh: a new cache folder); with
    ``peers`` (a run folder holding ``model.keras``; needs the training extra and ONNX
    Runtime), ONNX Runtime's float32 and static int8 rows of the full benchmark."""
    import tempfile

    import pneumocnn
    from benchmarks import TEST_DATA
    from benchmarks.variants import _bare_invoke, variant_cache
    from pneumocnn.core.labelled_data import index_folder
    from pneumocnn.core.preprocessing import load_pixels

    def litert(key: str, label: str, model: pneumocnn.Model, t: int) -> Variant:
        path = Path(model.path)
        return Variant(key, label, "LiteRT", label, t, path.stat().st_size, model.probabilities,
                       bare=_bare_invoke(path, t), details={"file": str(path)})

    models = {(path, t): pneumocnn.load(path, threads=t) for path in files for t in threads}
    variants = [litert(f"{path}-{t}t", model.description.info.get("quantization") or path.stem,
                       model, t) for (path, t), model in models.items()]
    with tempfile.TemporaryDirectory() as cache, variant_cache(Path(cache)):
        for folder in folders or []:
            for t in threads:
                model = pneumocnn.load(folder, threads=t)
                label = f"load() default (chose {model.variant.variant})"
                variants.append(litert(f"{folder}-default-{t}t", label, model, t))
    spec = next(iter(models.values())).description.preprocessing
    pixels = np.stack([load_pixels(image, spec) for image in index_folder(TEST_DATA / "xrays").paths])
    if peers is not None:
        variants += peer_variants(peers, pixels, threads)
    timed = batch1_latency(variants, pixels, rounds, warmup)
    rows = []
    for variant in variants:
        row = {"variant": variant.label, "runtime": variant.runtime,
               "file": variant.details.get("file", variant.key), "bytes": variant.size_bytes,
               "threads": variant.threads, "error": variant.error}
        for timing, key in (("", variant.key), ("bare_", f"{variant.key}:bare")):
            if key in timed:
                row |= {f"{timing}{k}": timed[key][k] for k in ("median_ms", "p95_ms", "min_ms")}
        rows.append(row)
    return {"rows": rows, "rounds": rounds, "warmup": warmup, "images": len(pixels)}


def peer_variants(run_dir: Path, pixels: np.ndarray, threads: list[int]) -> list[Variant]:
    """ONNX Runtime's rows (:func:`benchmarks.variants.onnx_variants`) for the float Keras
    model of ``run_dir``, its int8 calibrated on ``pixels``, at the thread counts asked for."""
    import tempfile

    from benchmarks.variants import load_keras, onnx_variants

    with tempfile.TemporaryDirectory() as work:  # the sessions hold their models once made
        return [variant for variant in onnx_variants(load_keras(run_dir), Path(work), pixels)
                if variant.run is None or variant.threads in threads]


def latency_table(result: dict) -> str:
    """The markdown table of :func:`variant_latency`'s result, with each row's median against
    the fastest at its thread count (and each bare call's against the fastest bare call)."""
    lines = ["| variant | runtime | file | threads | median ms | p95 ms | bare invoke median ms | "
             "vs fastest (median / bare) | bytes |", "|---|---|---|---|---|---|---|---|---|"]
    timed = [r for r in result["rows"] if "median_ms" in r]
    for row in sorted(timed, key=lambda r: (r["threads"], r["median_ms"])):
        peers = [r for r in timed if r["threads"] == row["threads"]]
        best = min(r["median_ms"] for r in peers)
        bare = "-", "-"
        if "bare_median_ms" in row:
            best_bare = min(r["bare_median_ms"] for r in peers if "bare_median_ms" in r)
            bare = f"{row['bare_median_ms']:.2f}", f"{row['bare_median_ms'] / best_bare:.2f}x"
        lines.append(f"| {row['variant']} | {row['runtime']} | {Path(row['file']).name} | "
                     f"{row['threads']} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} | "
                     f"{bare[0]} | {row['median_ms'] / best:.2f}x / {bare[1]} | "
                     f"{row['bytes']:,} |")
    lines += [f"| {row['variant']} | {row['runtime']} | - | - | could not run: {row['error']} "
              "| | | | |" for row in result["rows"] if "median_ms" not in row]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Time the files given (see the module's docstring); print the table, return the results."""
    from benchmarks import BUNDLED_MODELS, report

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("models", nargs="*", type=Path, default=[BUNDLED_MODELS],
                        help=".tflite files or folders of them (default: pneumocnn/models)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--peers", type=Path, default=None, metavar="RUN",
                        help="also time ONNX Runtime float32 and static int8 on RUN's model.keras "
                             "(e.g. benchmarks/bundled-run; needs the training extra)")
    parser.add_argument("--out", type=Path, default=None, help="folder for latency.{md,json}")
    args = parser.parse_args(argv)
    files = [found for given in args.models
             for found in (sorted(given.glob("*.tflite")) if given.is_dir() else [given])]
    if not files:
        parser.error(f"no .tflite file in {', '.join(map(str, args.models))}")
    load = report.load_average()
    machine = {"cpu": report.cpu_name(), "cpu_features": report.cpu_features(),
               "cores": os.cpu_count(), "ai-edge-litert": metadata.version("ai-edge-litert")}
    result = {"command": "python -m benchmarks.latency " + " ".join(argv or []),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "load_average_at_start": load,
              **variant_latency(files, args.threads, args.rounds, args.warmup,
                                [given for given in args.models if given.is_dir()], args.peers),
              "load_average_at_end": report.load_average()}
    features = machine["cpu_features"]
    text = (f"{latency_table(result)}\n\n{result['rounds']} calls of each row, alone, the rows "
            f"taking turns (20 blocks each) on "
            f"{result['images']} X-rays, LiteRT {machine['ai-edge-litert']}, {machine['cpu']} "
            f"({features['class']}: {', '.join(features['flags'] or [])}); load average "
            f"{f'{load[0]:.1f}' if load else '?'} at start.\n")
    print(text)
    report.write_pair(args.out, "latency", text, result)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
