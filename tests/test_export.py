"""pneumocnn.training.export: the model files of a run describe themselves; float32 TFLite
matches Keras and int8 agrees with it."""

from __future__ import annotations

import numpy as np
import pytest

import pneumocnn
from pneumocnn.core.modelfile import read_tflite_description
from pneumocnn.training.settings import TrainingConfig

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


def test_tflite_files_describe_themselves(tiny_run):
    int8 = read_tflite_description(tiny_run.tflite_models["int8"].read_bytes(), "int8")
    assert int8.info["quantization"] == "int8"
    assert int8.preprocessing.input_shape == (64, 64, 1)  # one channel: see export.one_channel
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


def test_int8_keeps_a_float_head_so_probabilities_rank(tiny_run, tiny_data):
    """The int8 body with a float head: int8 weights inside, and a probability per X-ray
    as distinct as the float model's (an int8 output would give at most 256 values, and a
    saturated sigmoid a handful near 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tiny_run.tflite_models["int8"].read_bytes())
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert np.dtype(np.int8) in dtypes
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.float32
    files = [str(p) for p in sorted(tiny_data.rglob("*.jpeg"))]
    p_float = [r.probability for r in pneumocnn.load(tiny_run.tflite_models["float32"]).predict(files)]
    p_int8 = [r.probability for r in pneumocnn.load(tiny_run.tflite_models["int8"]).predict(files)]
    assert len(set(p_int8)) == len(set(p_float))
