"""``python -m benchmarks.architectures [--out FOLDER]``: how fast candidate architectures would
run on this CPU, before anyone trains them.

Latency does not depend on the weights, so each candidate is built untrained, exported the way
pneumocnn exports a trained model (:func:`pneumocnn.training.export.to_tflite`: one input
channel, int8 with a float head calibrated on random images) and timed through pneumocnn's own
backend, batch 1, in interleaved rounds after warm-up, at 1 thread and all cores. It says which
changes are worth an accuracy study on this CPU class (``python -m studies.study`` decides
whether they keep accuracy); it claims nothing about accuracy itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import RESULTS, report  # noqa: E402
from benchmarks.variants import thread_counts  # noqa: E402

QUANTIZATIONS = ("float32", "int8")
ROUNDS, CALLS = 40, 5


def _cnn(size: int, filters: tuple[int, ...] | None = None):
    """small-bn (:func:`pneumocnn.training.architectures.small_bn`) at another input size or
    with other filter counts."""
    from pneumocnn.training.architectures import SMALL_BN_FILTERS, small_bn

    return small_bn((size, size, 3), 1, filters or SMALL_BN_FILTERS)


def _named(name: str, size: int = 150):
    """The training architecture of that name (``train --architecture NAME``)."""
    from pneumocnn.training.architectures import get_architecture

    return get_architecture(name).build((size, size, 3), 1)


CANDIDATES = {
    "small-bn, 150 px (the bundled model)": lambda: _cnn(150),
    "small-bn, 128 px": lambda: _cnn(128),
    "small-bn, 112 px": lambda: _cnn(112),
    "small-bn, 150 px, filters 8-16-32-64-128": lambda: _cnn(150, (8, 16, 32, 64, 128)),
    "small-bn, 150 px, filters 16-32-64-64-64": lambda: _cnn(150, (16, 32, 64, 64, 64)),
    "small-sep: small-bn, 150 px, separable blocks 2-5": lambda: _named("small-sep"),
    "small-sep-wide: filters 32-64-128-256-256, separable blocks 2-5":
        lambda: _named("small-sep-wide"),
}


def export(model, quantization: str) -> bytes:
    """The candidate as pneumocnn would export it (random representative images for int8)."""
    from pneumocnn.core.modelfile import ModelDescription
    from pneumocnn.core.preprocessing import Preprocessing
    from pneumocnn.training.export import to_tflite

    size = model.input_shape[1]
    description = ModelDescription(Preprocessing(height=size, width=size, channels=3))
    representative = np.random.default_rng(0).random((32, size, size, 3), np.float32)
    return to_tflite(model, description, quantization, representative)


def measure() -> list[dict]:
    """Median and p95 ms of each candidate, quantization and thread count, timed in the same
    interleaved rounds."""
    from pneumocnn.core.modelfile import read_tflite_description
    from pneumocnn.runtime.backends import TFLiteBackend

    rows, calls = [], {}
    for name, build in CANDIDATES.items():
        model = build()
        for quantization in QUANTIZATIONS:
            content = export(model, quantization)
            description = read_tflite_description(content, name)
            size = description.preprocessing.height
            pixels = np.random.default_rng(1).integers(0, 256, (1, size, size), np.uint8)
            for threads in thread_counts():
                backend = TFLiteBackend(content, description, name, threads)
                row = {"candidate": name, "quantization": quantization, "threads": threads,
                       "size_bytes": len(content), "parameters": int(model.count_params())}
                rows.append(row)
                calls[len(rows) - 1] = (backend, pixels)
    times: dict[int, list[float]] = {key: [] for key in calls}
    for round_ in range(ROUNDS + 1):
        for key, (backend, pixels) in calls.items():
            for _ in range(CALLS):
                start = time.perf_counter()
                backend.probabilities(pixels)
                if round_:  # the first round warms up
                    times[key].append((time.perf_counter() - start) * 1e3)
    for key, row in enumerate(rows):
        row["median_ms"] = float(np.median(times[key]))
        row["p95_ms"] = float(np.percentile(times[key], 95))
    return rows


def table(rows: list[dict], machine: dict) -> str:
    """The markdown report: every row, with its time against the bundled model's at the same
    quantization and thread count."""
    base = {(r["quantization"], r["threads"]): r["median_ms"] for r in rows
            if r["candidate"] == next(iter(CANDIDATES))}
    lines = ["# Candidate architectures: latency on this CPU, untrained", "",
             f"`python -m benchmarks.architectures`. Machine: {machine['cpu']} "
             f"({machine['cpu_features']['class']}), {machine['cores']} cores, ai-edge-litert "
             f"{machine['versions'].get('ai-edge-litert')}. Batch 1 through pneumocnn's LiteRT "
             f"backend, {ROUNDS} interleaved rounds of {CALLS} calls after warm-up. Latency only: "
             "whether a candidate keeps accuracy is for the study to say. Load average (1 min) at "
             f"start: {machine.get('load_average_at_start')}.", "",
             "| candidate | quantization | threads | parameters | size KB | median ms | p95 ms "
             "| vs the bundled model's layout |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["median_ms"] / base[(r["quantization"], r["threads"])]
        lines.append(f"| {r['candidate']} | {r['quantization']} | {r['threads']} | "
                     f"{r['parameters']:,} | {r['size_bytes'] / 1024:.0f} | {r['median_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure, write ``architectures.md`` and ``architectures.json`` to ``--out``, print the
    table; returns the rows."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.architectures",
                                     description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "quick",
                        help="folder for architectures.md / .json (default: benchmarks/results/"
                             "quick, which git ignores)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    machine = report.machine()
    rows = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows, machine)
    from pneumocnn.core.durable_files import write_text

    write_text(args.out / "architectures.md", text)
    write_text(args.out / "architectures.json", json.dumps(
        {"machine": machine, "rows": rows, "wall_seconds": time.perf_counter() - started},
        indent=1))
    print(text)
    print(f"[{time.perf_counter() - started:.0f} s]", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
