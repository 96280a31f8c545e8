"""studies.site_adaptation: the head refit and the paired comparison of levers on synthetic
data, and the levers on the network run on a tiny model trained in the test, with the shipped
X-rays standing in for a site."""

from __future__ import annotations

import numpy as np
import pytest

from pneumocnn.core.labelled_data import index_folder, patient_folds
from studies.site_adaptation import _refit_logistic


def _log_loss(features: np.ndarray, labels: np.ndarray, w: np.ndarray, b: float) -> float:
    p = 1 / (1 + np.exp(-(features @ w + b)))
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def test_the_refitted_last_layer_is_pulled_to_the_trained_one_as_much_as_asked():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 4))
    labels = (features @ np.array([2.0, -1.0, 0.0, 0.5]) + rng.normal(size=200) > 0).astype(float)
    w0, b0 = np.zeros(4), 0.0
    held, _ = _refit_logistic(features, labels, w0, b0, pull=1e6)
    assert np.abs(held).max() < 1e-3
    free, free_bias = _refit_logistic(features, labels, w0, b0, pull=1e-3)
    assert _log_loss(features, labels, free, free_bias) < _log_loss(features, labels, w0, b0) - 0.2
    assert np.sign(free[:2]).tolist() == [1.0, -1.0]


def test_levers_are_compared_to_the_first_on_the_same_resamples_of_whole_patients():
    from studies.site_adaptation import compared

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    patients = [f"patient{k // 2}" for k in range(80)]  # two X-rays a patient
    noise = rng.random(80)
    figures = compared({"as it is": noise, "the same": noise.copy(), "perfect": labels + 0.1 * noise},
                       labels, patients)
    assert figures["the same"]["difference"] == 0.0 and figures["the same"]["interval"] == [0.0, 0.0]
    perfect = figures["perfect"]
    assert perfect["roc_auc"] == 1.0
    assert perfect["difference"] == pytest.approx(1.0 - figures["as it is"]["roc_auc"])
    assert 0.0 < perfect["interval"][0] <= perfect["difference"] <= perfect["interval"][1]


@pytest.mark.training
def test_the_network_levers_fit_on_other_folds_and_fine_tune_only_the_last_block(tiny_run,
                                                                                  tiny_data):
    import keras

    from studies.site_adaptation import (
        FINE_TUNE_EPOCHS,
        compared,
        fine_tune_last_block,
        network_levers,
    )

    float_model = tiny_run.run_dir / "model.keras"
    images = index_folder(tiny_data)
    scores = network_levers(float_model, images, patient_folds(images, 3, 0))
    assert len(scores) == 2 + 3 + len(FINE_TUNE_EPOCHS)
    assert all(values.shape == (len(images),) and np.isfinite(values).all()
               for values in scores.values())
    figures = compared(scores, images.labels, images.patients())
    first, *others = figures.values()
    assert first["difference"] == 0.0 and first["interval"] == [0.0, 0.0]
    for row in others:
        assert 0.0 <= row["roc_auc"] <= 1.0
        assert row["difference"] == pytest.approx(row["roc_auc"] - first["roc_auc"])
        assert row["interval"][0] <= row["interval"][1]

    model = keras.models.load_model(float_model, compile=False)
    before = [layer.get_weights() for layer in model.layers]
    inputs = np.random.default_rng(0).random((16, *model.inputs[0].shape[1:]), np.float32)
    fine_tune_last_block(model, inputs, np.array([0, 1] * 8), epochs=2)
    changed = {layer.name for layer, weights in zip(model.layers, before, strict=True)
               if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), weights,
                                                                strict=True))}
    last_conv = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    last_dense = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    assert changed == {last_conv, last_dense}
