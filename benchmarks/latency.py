"""Batch-1 latency and batch-32 throughput, interleaved across variants after warm-up.

Each round times one call of every variant, in a fresh random order, on the same input, so
slow drifts of a noisy machine (other processes, frequency changes) hit every variant alike.
The garbage collector is off while timing, as in ``timeit``.

``python -m benchmarks.latency [FOLDER_OR_FILE ...] [--threads 1 2] [--rounds 300]`` times the
``.tflite`` files given (default: the bundled ``pneumocnn/models``) alone, without TensorFlow:
each at each thread count through pneumocnn (``load(path).probabilities``, the path ``predict``
takes) and as a bare interpreter call, all in the same interleaved rounds, on real X-rays
(``tests/data/xrays``); it prints a markdown table and, with ``--out DIR``, writes
``DIR/latency.{md,json}``. What to run on a CPU class to see which variant wins there.
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


def batch1_latency(variants: list[Variant], inputs: np.ndarray, rounds: int, warmup: int) -> dict:
    """Per variant key: every batch-1 call's seconds and their summary; LiteRT variants also
    under ``KEY:bare``, their interpreter call alone, timed in the same rounds."""
    calls = {v.key: _cycling(v, inputs, 1) for v in variants if v.run is not None}
    calls |= {f"{v.key}:bare": _cycling(v, inputs, 1, bare=True) for v in variants if v.bare}
    times = interleaved(calls, rounds, warmup)
    return {key: {"seconds": t, **summarize(t)} for key, t in times.items()}


def throughput(variants: list[Variant], inputs: np.ndarray, rounds: int, warmup: int,
               batch: int = 32) -> dict:
    """Per variant key: seconds of each batch-``batch`` call and images per second at the median."""
    batch = min(batch, len(inputs))
    calls = {v.key: _cycling(v, inputs, batch) for v in variants if v.run is not None}
    times = interleaved(calls, rounds, warmup, seed=1)
    return {key: {"batch": batch, "seconds": t, **summarize(t),
                  "images_per_s": batch / float(np.median(t))} for key, t in times.items()}


def variant_latency(files: list[Path], threads: list[int], rounds: int, warmup: int) -> dict:
    """Per file and thread count: the median, p95 and min ms of pneumocnn's call and of the
    bare interpreter call, on the shipped X-rays, every call of every file in the same
    interleaved rounds; and the order of the files by pneumocnn's median at each thread count."""
    import pneumocnn
    from benchmarks import TEST_DATA
    from benchmarks.variants import _bare_invoke
    from pneumocnn.core.labelled_data import index_folder
    from pneumocnn.core.preprocessing import load_pixels

    models = {(path, t): pneumocnn.load(path, threads=t) for path in files for t in threads}
    spec = next(iter(models.values())).description.preprocessing
    pixels = np.stack([load_pixels(image, spec) for image in index_folder(TEST_DATA / "xrays").paths])
    variants = []
    for (path, t), model in models.items():
        name = model.description.info.get("quantization") or path.stem
        variants.append(Variant(f"{path}-{t}t", name, "LiteRT", name, t, path.stat().st_size,
                                model.probabilities, bare=_bare_invoke(path, t),
                                details={"file": str(path)}))
    timed = batch1_latency(variants, pixels, rounds, warmup)
    rows = []
    for variant in variants:
        ours, bare = timed[variant.key], timed[f"{variant.key}:bare"]
        rows.append({"variant": variant.label, "file": variant.details["file"],
                     "bytes": variant.size_bytes, "threads": variant.threads,
                     **{f"pneumocnn_{k}": ours[k] for k in ("median_ms", "p95_ms", "min_ms")},
                     **{f"bare_{k}": bare[k] for k in ("median_ms", "p95_ms", "min_ms")}})
    return {"rows": rows, "rounds": rounds, "warmup": warmup, "images": len(pixels)}


def latency_table(result: dict) -> str:
    """The markdown table of :func:`variant_latency`'s result, with each variant's median
    against the fastest at its thread count."""
    lines = ["| variant | file | threads | pneumocnn median ms | p95 ms | bare invoke median ms | "
             "vs fastest (pneumocnn / bare) | bytes |", "|---|---|---|---|---|---|---|---|"]
    rows = sorted(result["rows"], key=lambda r: (r["threads"], r["pneumocnn_median_ms"]))
    for row in rows:
        peers = [r for r in rows if r["threads"] == row["threads"]]
        best = min(r["pneumocnn_median_ms"] for r in peers)
        best_bare = min(r["bare_median_ms"] for r in peers)
        lines.append(f"| {row['variant']} | {Path(row['file']).name} | {row['threads']} | "
                     f"{row['pneumocnn_median_ms']:.2f} | "
                     f"{row['pneumocnn_p95_ms']:.2f} | {row['bare_median_ms']:.2f} | "
                     f"{row['pneumocnn_median_ms'] / best:.2f}x / "
                     f"{row['bare_median_ms'] / best_bare:.2f}x | {row['bytes']:,} |")
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
    parser.add_argument("--out", type=Path, default=None, help="folder for latency.{md,json}")
    args = parser.parse_args(argv)
    files = [found for given in args.models
             for found in (sorted(given.glob("*.tflite")) if given.is_dir() else [given])]
    load = report.load_average()
    machine = {"cpu": report.cpu_name(), "cpu_features": report.cpu_features(),
               "cores": os.cpu_count(), "ai-edge-litert": metadata.version("ai-edge-litert")}
    result = {"command": "python -m benchmarks.latency " + " ".join(argv or []),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "load_average_at_start": load,
              **variant_latency(files, args.threads, args.rounds, args.warmup),
              "load_average_at_end": report.load_average()}
    features = machine["cpu_features"]
    text = (f"{latency_table(result)}\n\n{result['rounds']} interleaved rounds on "
            f"{result['images']} X-rays, LiteRT {machine['ai-edge-litert']}, {machine['cpu']} "
            f"({features['class']}: {', '.join(features['flags'] or [])}); load average "
            f"{f'{load[0]:.1f}' if load else '?'} at start.\n")
    print(text)
    report.write_pair(args.out, "latency", text, result)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
