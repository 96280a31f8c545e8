"""Accuracy figures of every variant on the evaluation set, agreement with float Keras, and ties.

A model whose probabilities take few distinct values cannot order a worklist: images that share
one probability are tied, whatever their findings. Each variant's ``distinct_probabilities``
counts its distinct values over the evaluation set; ``largest_tie`` is the largest number of
images sharing one probability (0 when no two images share one) and ``largest_tie_pct`` that
number as a share of the images. Images whose decoded pixels are identical (the data set holds
byte-identical copies of some files) count once: the same input giving the same answer is no
tie. ``tie_images`` is the number of distinct inputs the ties are counted over.
"""

from __future__ import annotations

import numpy as np

from benchmarks.variants import Variant
from pneumocnn.core.metrics import binary_metrics

REFERENCE = "keras-compiled"
CHUNK = 32


def probabilities(variant: Variant, inputs: np.ndarray) -> np.ndarray:
    """The variant's calibrated probabilities for all inputs, in chunks of 32."""
    return np.concatenate([variant.run(inputs[i:i + CHUNK]) for i in range(0, len(inputs), CHUNK)])


def distinct_inputs(inputs: np.ndarray) -> np.ndarray:
    """Indices of the first of each group of identical inputs, in order."""
    _, first = np.unique(inputs.reshape(len(inputs), -1), axis=0, return_index=True)
    return np.sort(first)


def ties(p: np.ndarray) -> dict:
    """Distinct values of ``p`` and the largest group of equal values (0 when all differ)."""
    _, counts = np.unique(p, return_counts=True)
    largest = int(counts.max()) if counts.size and counts.max() > 1 else 0
    return {"distinct_probabilities": int(counts.size), "largest_tie": largest,
            "largest_tie_pct": 100.0 * largest / max(len(p), 1), "tie_images": int(len(p))}


def score(variants: list[Variant], inputs: np.ndarray, labels: np.ndarray,
          threshold: float) -> dict[str, dict]:
    """Metrics at ``threshold`` per variant key, plus ``agreement`` (share of images given the
    float Keras model's label), ``max_abs_diff`` (largest probability difference from it) and
    the ties of its probabilities (see the module's docstring)."""
    scored = {v.key: probabilities(v, inputs) for v in variants if v.run is not None}
    reference, unique = scored[REFERENCE], distinct_inputs(inputs)
    results = {}
    for key, p in scored.items():
        metrics = binary_metrics(labels, p, threshold)
        metrics["agreement"] = float(np.mean((p >= threshold) == (reference >= threshold)))
        metrics["max_abs_diff"] = float(np.max(np.abs(p - reference)))
        results[key] = metrics | ties(p[unique])
    return results
