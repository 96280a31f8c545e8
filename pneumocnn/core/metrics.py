"""Binary classification metrics, threshold choice and probability calibration, on numpy."""

from __future__ import annotations

import math

import numpy as np


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Return accuracy, sensitivity (positive recall), specificity, precision, F1, ROC AUC,
    expected calibration error and the confusion matrix ``[[tn, fp], [fn, tp]]`` at
    ``threshold`` (a probability at or above it is called positive)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    called = p >= threshold
    tp = int((called & y).sum())
    tn = int((~called & ~y).sum())
    fp = int((called & ~y).sum())
    fn = int((~called & y).sum())
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
        "roc_auc": roc_auc(y, p),
        "ece": expected_calibration_error(y, p),
        "confusion": [[tn, fp], [fn, tp]],
    }


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is absent."""
    y = np.asarray(labels).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(probabilities, dtype=np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((~y).sum()), 1)]
    return fpr, tpr


def threshold_for_sensitivity(
    labels: np.ndarray, probabilities: np.ndarray, target: float
) -> float:
    """The highest threshold whose sensitivity on these data is at least ``target``."""
    if not 0.0 < target <= 1.0:  # NaN fails too; a target above 1 would index from the end
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    y = np.asarray(labels).astype(bool)
    positive_scores = np.sort(np.asarray(probabilities, dtype=np.float64)[y])
    if positive_scores.size == 0:
        raise ValueError("no positive examples to choose a threshold on")
    misses_allowed = math.floor((1.0 - target) * positive_scores.size + 1e-9)
    return float(positive_scores[misses_allowed])


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predicted, observed, counts)`` over the non-empty ones of ``bins`` equal-width
    probability bins: the mean predicted probability, the observed fraction positive and the
    number of images in each; the one binning behind the calibration error and the reliability
    diagram."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    filled = [b for b in range(bins) if (which == b).any()]
    predicted = np.array([p[which == b].mean() for b in filled], dtype=np.float64)
    observed = np.array([y[which == b].mean() for b in filled], dtype=np.float64)
    counts = np.array([int((which == b).sum()) for b in filled], dtype=np.int64)
    return predicted, observed, counts


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Expected calibration error over ``bins`` equal-width probability bins."""
    predicted, observed, counts = reliability_bins(labels, probabilities, bins)
    if counts.size == 0:
        return 0.0
    return float(np.sum(counts / counts.sum() * np.abs(observed - predicted)))


def logit(probabilities: np.ndarray | float) -> np.ndarray:
    """``log(p / (1 - p))``, with ``p`` clipped to ``[1e-7, 1 - 1e-7]`` so that 0 and 1 give
    finite values; the one logit every calibration and explanation uses."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """The temperature ``T`` and bias ``b`` minimising the log loss of
    ``sigmoid(logit(p) / T + b)`` (Platt scaling of the logit), within T in [0.05, 20] and
    b in [-10, 10] (bounded, so that separable data give a finite answer)."""
    y = np.asarray(labels, dtype=np.float64)
    logits = logit(probabilities)

    def log_loss(inverse_t: float, bias: float) -> float:
        z = logits * inverse_t + bias
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    inverse_t, bias = 1.0, 0.0
    for _ in range(100):  # the loss is convex in (1/T, b): minimise each in turn
        inverse_t = _golden_minimum(lambda a, b=bias: log_loss(a, b), 1 / 20, 20.0)
        bias = _golden_minimum(lambda b, a=inverse_t: log_loss(a, b), -10.0, 10.0)
    return 1.0 / inverse_t, bias


def _golden_minimum(function, low: float, high: float, steps: int = 60) -> float:
    """The minimum of a unimodal function on [low, high], by golden-section search."""
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(steps):
        a, b = high - golden * (high - low), low + golden * (high - low)
        if function(a) < function(b):
            high = b
        else:
            low = a
    return (low + high) / 2


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks
