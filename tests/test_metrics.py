"""pneumocnn.core.metrics against hand-checked values and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumocnn.core.metrics import (
    binary_metrics,
    bootstrap_interval,
    estimate_prior,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
)

# 4 positives, 6 negatives; at threshold 0.5 (inclusive): tp 3 (0.9 0.8 0.6), fn 1 (0.3),
# fp 2 (0.7 and 0.5 itself), tn 4 (0.4 0.2 0.1 0.05)
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROBABILITIES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.5, 0.05])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return (greater + 0.5 * ties) / (positive.size * negative.size)


def random_scores(seed: int, n: int = 300, levels: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores on a coarse grid, so many scores tie (also across classes)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = np.round(np.clip(0.25 * labels + rng.random(n) * 0.75, 0, 1) * levels) / levels
    return labels, scores


# ---------------------------------------------------------------------------------------------
# binary_metrics


def test_binary_metrics_hand_checked():
    result = binary_metrics(LABELS, PROBABILITIES, 0.5)
    assert result["confusion"] == [[4, 2], [1, 3]]
    assert result["n"] == 10
    assert result["threshold"] == 0.5
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["sensitivity"] == pytest.approx(0.75)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))  # = 2/3
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["roc_auc"] == pytest.approx(20 / 24)  # 20 of 24 pairs ordered correctly
    assert 0.0 <= result["ece"] <= 1.0


def test_binary_metrics_threshold_moves_the_confusion():
    assert binary_metrics(LABELS, PROBABILITIES, 0.95)["confusion"] == [[6, 0], [4, 0]]
    assert binary_metrics(LABELS, PROBABILITIES, 0.0)["confusion"] == [[0, 6], [0, 4]]
    assert binary_metrics(LABELS, PROBABILITIES, 0.65)["confusion"] == [[5, 1], [2, 2]]


def test_binary_metrics_accepts_bool_and_list_labels():
    as_bool = binary_metrics(LABELS.astype(bool), PROBABILITIES, 0.5)
    as_list = binary_metrics(LABELS.tolist(), PROBABILITIES.tolist(), 0.5)
    assert as_bool == as_list == binary_metrics(LABELS, PROBABILITIES, 0.5)


def test_binary_metrics_undefined_ratios_are_nan():
    result = binary_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
    assert result["specificity"] == 1.0 and result["accuracy"] == 1.0
    assert math.isnan(result["sensitivity"])
    assert math.isnan(result["precision"])
    assert math.isnan(result["roc_auc"])


# ---------------------------------------------------------------------------------------------
# ROC


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_brute_force_with_ties(seed):
    labels, scores = random_scores(seed)
    assert len(np.unique(scores)) < 20  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_roc_auc_extremes():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5
    assert math.isnan(roc_auc(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])))


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve(seed):
    labels, scores = random_scores(seed)
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    thresholds = np.unique(scores)[::-1]
    assert fpr.size == thresholds.size + 1
    for k, threshold in enumerate(thresholds, start=1):
        assert tpr[k] == pytest.approx(np.mean(scores[labels == 1] >= threshold))
        assert fpr[k] == pytest.approx(np.mean(scores[labels == 0] >= threshold))
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(labels, scores), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# threshold for a target sensitivity


def sensitivity_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores[labels == 1] >= threshold))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(seed, target):
    for labels, scores in (random_scores(seed), random_scores(seed, levels=10_000)):
        threshold = threshold_for_sensitivity(labels, scores, target)
        assert sensitivity_at(labels, scores, threshold) >= target
        higher = np.unique(scores)[np.unique(scores) > threshold]
        if higher.size:
            assert sensitivity_at(labels, scores, higher[0]) < target
        assert sensitivity_at(labels, scores, np.nextafter(threshold, np.inf)) < target


def test_threshold_for_sensitivity_hand_checked():
    # positives 0.9 0.8 0.6 0.3: sensitivity 0.75 needs 3 of 4 above, so 0.6
    assert threshold_for_sensitivity(LABELS, PROBABILITIES, 0.75) == 0.6
    assert threshold_for_sensitivity(LABELS, PROBABILITIES, 0.76) == 0.3
    assert threshold_for_sensitivity(LABELS, PROBABILITIES, 0.9) == 0.3
    assert threshold_for_sensitivity(LABELS, PROBABILITIES, 0.25) == 0.9


@pytest.mark.parametrize("target", [0.0, -0.5, 1.5, 95.0, math.nan])
def test_threshold_for_sensitivity_rejects_impossible_targets(target):
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(LABELS, PROBABILITIES, target)


def test_threshold_for_sensitivity_needs_positives():
    with pytest.raises(ValueError):
        threshold_for_sensitivity(np.zeros(3), np.array([0.1, 0.5, 0.9]), 0.9)


# ---------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize(("true_temperature", "true_bias"), [(2.5, 0.0), (0.5, 0.0), (1.0, 1.5),
                                                         (2.0, -1.0)])
def test_fit_calibration_recovers_a_known_temperature_and_bias(true_temperature, true_bias):
    rng = np.random.default_rng(7)
    logits = rng.normal(1.0, 3.0, 20_000)
    labels = (rng.random(logits.size) < sigmoid(logits / true_temperature + true_bias)).astype(int)
    temperature, bias = fit_calibration(labels, sigmoid(logits))
    assert temperature == pytest.approx(true_temperature, rel=0.1)
    assert bias == pytest.approx(true_bias, abs=0.1)


def test_fit_calibration_of_calibrated_probabilities_is_the_identity():
    rng = np.random.default_rng(8)
    probabilities = rng.random(20_000)
    labels = rng.random(probabilities.size) < probabilities
    temperature, bias = fit_calibration(labels, probabilities)
    assert temperature == pytest.approx(1.0, rel=0.1) and bias == pytest.approx(0.0, abs=0.1)


def test_fit_calibration_of_separable_scores_stays_finite():
    scores = np.linspace(0.01, 0.99, 200)
    temperature, bias = fit_calibration(scores > 0.5, scores)
    assert 0.05 <= temperature <= 20 and -10 <= bias <= 10


def test_expected_calibration_error_hand_checked():
    # bin [0.1, 0.2): mean p 0.1, mean y 0.5; bin [0.9, 1]: mean p 0.95, mean y 1
    labels = np.array([0, 1, 1, 1])
    probabilities = np.array([0.1, 0.1, 0.9, 1.0])
    assert expected_calibration_error(labels, probabilities) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.05
    )


def test_reliability_bins_hand_checked():
    """The one binning of the calibration error and the reliability diagram: empty bins are
    left out, 1.0 falls in the last bin."""
    predicted, observed, counts = reliability_bins(np.array([0, 1, 1, 1]),
                                                   np.array([0.1, 0.1, 0.9, 1.0]))
    assert predicted == pytest.approx([0.1, 0.95])
    assert observed == pytest.approx([0.5, 1.0])
    assert counts.tolist() == [2, 2]
    assert [a.size for a in reliability_bins(np.array([]), np.array([]))] == [0, 0, 0]
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_expected_calibration_error_of_calibrated_data_is_near_zero():
    rng = np.random.default_rng(9)
    probabilities = rng.random(200_000)
    labels = rng.random(probabilities.size) < probabilities
    assert expected_calibration_error(labels, probabilities) < 0.01
    # and it does see miscalibration: the same labels with overconfident probabilities
    overconfident = sigmoid(3 * np.log(probabilities / (1 - probabilities)))
    assert expected_calibration_error(labels, overconfident) > 0.05


# ---------------------------------------------------------------------------------------------
# estimate_prior (EM, Saerens et al. 2002) and bootstrap_interval


def calibrated_sample(seed: int, n: int, share: float, training_prior: float):
    """Labels drawn at ``share`` and the posteriors of a model calibrated where the share was
    ``training_prior``: scores N(+1, 1) for positives and N(-1, 1) for negatives, whose
    likelihood ratio is exp(2x), so the posterior is sigmoid(2x + logit(training_prior))."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < share
    x = rng.normal(np.where(labels, 1.0, -1.0), 1.0)
    return labels, sigmoid(2 * x + math.log(training_prior / (1 - training_prior)))


@pytest.mark.parametrize("share", [0.1, 0.3, 0.625, 0.9])
def test_estimate_prior_recovers_a_known_share(share):
    labels, posteriors = calibrated_sample(1, 50_000, share, training_prior=0.75)
    estimate = estimate_prior(posteriors, 0.75)
    assert estimate.converged and estimate.iterations > 1
    assert estimate.prior == pytest.approx(labels.mean(), abs=0.01)
    # the outputs' mean alone, the naive estimate, is pulled toward 0.75
    assert abs(posteriors.mean() - labels.mean()) > abs(estimate.prior - labels.mean()) + 0.02


def test_estimate_prior_stays_where_nothing_changed():
    labels, posteriors = calibrated_sample(2, 50_000, 0.4, training_prior=0.4)
    assert estimate_prior(posteriors, 0.4).prior == pytest.approx(0.4, abs=0.01)


def test_estimate_prior_stops_at_its_step_limit_and_refuses_nonsense():
    labels, posteriors = calibrated_sample(3, 1000, 0.2, training_prior=0.7)
    stopped = estimate_prior(posteriors, 0.7, max_iterations=2)
    assert not stopped.converged and stopped.iterations == 2
    for bad in (np.array([]), np.array([0.5, np.nan]), np.array([1.5])):
        with pytest.raises(ValueError, match="probabilities"):
            estimate_prior(bad, 0.5)
    with pytest.raises(ValueError, match="training prior"):
        estimate_prior(posteriors, 1.0)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(4)
    widths = []
    for n in (50, 500, 5000):
        hits = rng.random(n) < 0.9
        low, high = bootstrap_interval(hits)
        assert low < hits.mean() < high
        widths.append(high - low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]
    # at n = 5000 the percentile interval is the normal one, +-1.96 standard errors
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.09 / 5000), rel=0.1)


def test_bootstrap_interval_is_the_bootstrap_of_resampled_items():
    """Drawing binomial counts is resampling the items: the same interval, to resampling noise,
    as 20,000 resamples of indices; and a fixed seed gives a fixed interval."""
    hits = np.r_[np.ones(27, bool), np.zeros(7, bool)]
    rng = np.random.default_rng(5)
    resampled = hits[rng.integers(0, hits.size, (20_000, hits.size))].mean(axis=1)
    expected = np.quantile(resampled, [0.025, 0.975])
    assert bootstrap_interval(hits, resamples=20_000) == pytest.approx(tuple(expected), abs=0.03)
    assert bootstrap_interval(hits) == bootstrap_interval(hits)
    assert bootstrap_interval(hits, level=0.5)[1] - bootstrap_interval(hits, level=0.5)[0] < (
        bootstrap_interval(hits)[1] - bootstrap_interval(hits)[0])


def test_bootstrap_interval_of_all_or_no_hits_is_the_exact_bound():
    """Resampling cannot vary a share of 1 (or 0): the free end is the exact bound instead of a
    zero-width interval; 34 of 34 gives 0.897, the level at which 34 hits in a row have a 2.5 %
    chance."""
    low, high = bootstrap_interval(np.ones(34, bool))
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 34)) and 0.89 < low < 0.9
    low, high = bootstrap_interval(np.zeros(34, bool))
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 34))
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([], bool)))
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_interval(np.ones(3, bool), level=1.0)
