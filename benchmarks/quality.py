"""Accuracy figures of every variant on the evaluation set, and agreement with float Keras."""

from __future__ import annotations

import numpy as np

from benchmarks.variants import Variant
from pneumocnn.core.metrics import binary_metrics

REFERENCE = "keras-compiled"
CHUNK = 32


def probabilities(variant: Variant, inputs: np.ndarray) -> np.ndarray:
    """The variant's calibrated probabilities for all inputs, in chunks of 32."""
    return np.concatenate([variant.run(inputs[i:i + CHUNK]) for i in range(0, len(inputs), CHUNK)])


def score(variants: list[Variant], inputs: np.ndarray, labels: np.ndarray,
          threshold: float) -> dict[str, dict]:
    """Metrics at ``threshold`` per variant key, plus ``agreement`` (share of images given the
    float Keras model's label) and ``max_abs_diff`` (largest probability difference from it)."""
    scored = {v.key: probabilities(v, inputs) for v in variants if v.run is not None}
    reference = scored[REFERENCE]
    results = {}
    for key, p in scored.items():
        metrics = binary_metrics(labels, p, threshold)
        metrics["agreement"] = float(np.mean((p >= threshold) == (reference >= threshold)))
        metrics["max_abs_diff"] = float(np.max(np.abs(p - reference)))
        results[key] = metrics
    return results
