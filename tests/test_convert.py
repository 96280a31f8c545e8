"""pneumocnn.training.convert (`pneumocnn convert`): a .keras file, the seed's weights-only
first_try.h5 and a SavedModel folder become self-describing .tflite files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import real_images

import pneumocnn
from pneumocnn.cli import main

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


@pytest.mark.training
def test_convert_keras_file_keeps_its_description(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "converted.tflite"
    assert main(["convert", str(tiny_run.keras_model), "--out", str(out),
                 "--data", str(tiny_data)]) == 0
    converted = pneumocnn.load(out)
    assert converted.description.info["quantization"] == "int8"
    assert converted.description.preprocessing.height == 64
    original = pneumocnn.load(tiny_run.tflite_models["int8"])
    image = real_images("PNEUMONIA", 1)[0]
    assert converted.predict(image).label == original.predict(image).label


@pytest.mark.training
def test_convert_seed_weights_file(tiny_data, tmp_path):
    """The seed saved weights only (`save_weights('first_try.h5')`, Keras 2 HDF5)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from pneumocnn.training.architectures import seed_to_be

    seed_model = seed_to_be((150, 150, 3))
    weights = tmp_path / "first_try.h5"
    with h5py.File(weights, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, seed_model)
    out = tmp_path / "seed-f32.tflite"
    assert main(["convert", str(weights), "--out", str(out), "--quantization", "float32"]) == 0
    converted = pneumocnn.load(out)
    image = real_images("NORMAL", 1)[0]
    from pneumocnn.core.preprocessing import preprocess

    spec = converted.description.preprocessing
    assert spec.channels == 1  # the .tflite takes one channel; the Keras model three equal ones
    expected = float(seed_model(preprocess(image, replace(spec, channels=3))[None])[0, 0])
    assert converted.predict(image).probability == pytest.approx(expected, abs=1e-5)
    assert np.isfinite(expected)


@pytest.mark.training
def test_convert_saved_model_folder(tiny_run, tiny_data, tmp_path):
    import keras

    saved = tmp_path / "saved_model"
    keras.saving.load_model(tiny_run.keras_model).export(str(saved), verbose=False)
    out = tmp_path / "from-savedmodel.tflite"
    assert main(["convert", str(saved), "--out", str(out), "--quantization", "float32",
                 "--threshold", "0.4"]) == 0
    converted = pneumocnn.load(out)
    assert converted.threshold == 0.4 and converted.description.preprocessing.height == 64
    reference = pneumocnn.load(tiny_run.tflite_models["float32"])
    image = real_images("NORMAL", 1)[0]
    from pneumocnn.core.preprocessing import load_pixels

    x = load_pixels(image, converted.description.preprocessing)[None]
    assert converted.backend.probabilities(x)[0] == pytest.approx(
        reference.backend.probabilities(x)[0], abs=1e-5)


@pytest.mark.training
def test_convert_with_no_flags_writes_float16_and_says_so(tiny_run, tmp_path, caplog):
    out = tmp_path / "model.tflite"
    assert main(["convert", str(tiny_run.keras_model), "--out", str(out)]) == 0
    assert pneumocnn.load(out).description.info["quantization"] == "float16"
    assert "writing float16 (int8 needs X-rays to calibrate on" in caplog.text
