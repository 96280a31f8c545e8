"""Binary classification metrics, threshold choice, probability calibration, a new site's
class prior (EM) and bootstrap confidence intervals, on numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PriorEstimate:
    """The positive-class share of a set of images estimated from a model's outputs:
    ``prior``, after ``iterations`` EM steps (``converged`` False when the step limit ended
    them)."""

    prior: float
    iterations: int
    converged: bool


def estimate_prior(probabilities: np.ndarray, training_prior: float, *,
                   tolerance: float = 1e-8, max_iterations: int = 10_000) -> PriorEstimate:
    """The positive-class share of unlabelled images, by EM on calibrated probabilities
    (Saerens, Latinne and Decaestecker 2002, *Adjusting the outputs of a classifier to new a
    priori probabilities*).

    ``probabilities`` are posteriors calibrated under the positive share ``training_prior``.
    Each step re-weighs them to the current estimate ``prior`` and averages them:
    ``p'_i = prior/training_prior * p_i / (prior/training_prior * p_i +
    (1-prior)/(1-training_prior) * (1-p_i))``, ``prior = mean(p'_i)``, from
    ``prior = training_prior`` until it moves less than ``tolerance``. It assumes that only the
    share differs (the images of each class look as they did where the model was calibrated)."""
    if not 0.0 < training_prior < 1.0:
        raise ValueError(f"training prior must lie in (0, 1), got {training_prior}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.size == 0 or not np.all((p >= 0) & (p <= 1)):  # NaN fails too
        raise ValueError("estimate_prior needs probabilities in [0, 1], at least one")
    prior = training_prior
    for iteration in range(1, max_iterations + 1):
        positive = prior / training_prior * p
        negative = (1 - prior) / (1 - training_prior) * (1 - p)
        updated = float(np.mean(positive / (positive + negative)))
        moved, prior = abs(updated - prior), updated
        if moved < tolerance:
            return PriorEstimate(prior, iteration, True)
    return PriorEstimate(prior, max_iterations, False)


def bootstrap_interval(hits: np.ndarray, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the share of true values in ``hits`` (a
    sensitivity: the pneumonias called; a specificity: the normals cleared).

    Drawing ``n`` items with replacement from ``n`` of which ``k`` are hits gives
    Binomial(``n``, ``k/n``) hits, so the ``resamples`` are drawn as that (the same
    distribution as resampling the items, vectorised, in memory independent of ``n``), with a
    fixed ``seed``. A share of 0 or 1 cannot vary under resampling: there the interval's free
    end is the exact (Clopper-Pearson) bound instead, ``((1 - level) / 2) ** (1 / n)`` from the
    end, not a zero-width interval. ``(nan, nan)`` for no items."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    h = np.asarray(hits).astype(bool)
    n, k = h.size, int(h.sum())
    if n == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    if k in (0, n):
        exact = tail ** (1 / n)
        return (exact, 1.0) if k == n else (0.0, 1 - exact)
    draws = np.random.default_rng(seed).binomial(n, k / n, resamples) / n
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


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
