"""Batch-1 latency and batch-32 throughput, interleaved across variants after warm-up.

Each round times one call of every variant, in a fresh random order, on the same input, so
slow drifts of a noisy machine (other processes, frequency changes) hit every variant alike.
The garbage collector is off while timing, as in ``timeit``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

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
