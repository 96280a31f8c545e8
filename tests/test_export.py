"""pneumocnn.training.export: the model files of a run describe themselves; float32 TFLite
matches Keras and int8 agrees with it."""

from __future__ import annotations

import numpy as np
import pytest

import pneumocnn
from pneumocnn.core.modelfile import read_from_tflite
from pneumocnn.training.settings import TrainingConfig

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


def test_tflite_files_describe_themselves(tiny_run):
    int8 = read_from_tflite(tiny_run.tflite_models["int8"].read_bytes(), "int8")
    assert int8.info["quantization"] == "int8"
    assert int8.preprocessing.input_shape == (64, 64, 3)
    assert int8.labels == ("NORMAL", "PNEUMONIA")
    provenance = int8.info["provenance"]
    assert provenance["train_images"] + provenance["validation_images"] == 48
    assert provenance["config"]["architecture"] == TrainingConfig().architecture  # the default
    assert int8.preprocessing.normalize == TrainingConfig().normalize
    assert "validation_metrics" in int8.info


def test_float32_tflite_matches_keras_and_int8_agrees(tiny_run, tiny_data):
    files = [str(p) for p in sorted(tiny_data.rglob("*.jpeg"))]
    keras_model = pneumocnn.load(tiny_run.keras_model)
    float32 = pneumocnn.load(tiny_run.tflite_models["float32"])
    int8 = pneumocnn.load(tiny_run.tflite_models["int8"])
    p_keras = np.array([r.probability for r in keras_model.predict(files)])
    p_float = np.array([r.probability for r in float32.predict(files)])
    assert np.abs(p_keras - p_float).max() < 1e-4
    p_int8 = np.array([r.probability for r in int8.predict(files)])
    assert np.abs(p_int8 - p_float).mean() < 0.03
    # labels agree wherever quantization noise cannot cross the threshold (the validation
    # threshold of a 2-epoch model sits among the scores)
    clear = np.abs(p_float - int8.threshold) > 0.05
    assert clear.sum() >= 24
    assert np.array_equal(p_int8[clear] >= int8.threshold, p_float[clear] >= int8.threshold)
