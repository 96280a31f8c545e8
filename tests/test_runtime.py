"""The runtime wing: load and predict on LiteRT, inputs of every kind, errors, threads."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import FULL_DATA, FULL_RESOLUTION, TINY_FLOAT, TINY_INT8, real_images
from PIL import Image

import pneumocnn
from pneumocnn.core.modelfile import ModelDescription, embed_in_tflite, read_from_tflite
from pneumocnn.core.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def int8_path():
    return TINY_INT8


@pytest.fixture(scope="module")
def model(int8_path):
    return pneumocnn.load(int8_path)


def test_inference_never_imports_tensorflow(int8_path):
    image = real_images("PNEUMONIA", 1)[0]
    code = textwrap.dedent(f"""
        import sys
        import pneumocnn
        model = pneumocnn.load({str(int8_path)!r})
        print(model.predict({str(image)!r}))
        print(pneumocnn.predict is not None, pneumocnn.evaluate is not None)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert image.name in result.stdout


def test_every_input_kind_gives_the_same_answer(model):
    path = real_images("NORMAL", 1)[0]
    data = path.read_bytes()
    with Image.open(path) as opened:
        pil = opened.convert("RGB")
    pixels = np.asarray(pil)
    inputs = [str(path), path, data, io.BytesIO(data), pil, pixels, pixels[..., 0],
              pixels[..., :1], pixels[..., 0].astype(np.uint16) * 257, pixels / 255.0]
    probabilities = [model.predict(item).probability for item in inputs]
    assert np.allclose(probabilities, probabilities[0], atol=1e-6), probabilities


def test_result_is_a_small_frozen_record(model):
    path = real_images("PNEUMONIA", 1)[0]
    result = model.predict(path)
    assert result.label in model.labels and 0.0 <= result.probability <= 1.0
    assert result.label == ("PNEUMONIA" if result.probability >= model.threshold else "NORMAL")
    assert result.source == str(path) and result.ok
    assert result.to_dict()["threshold"] == model.threshold
    assert path.name in str(result) and "probability" in str(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.label = "NORMAL"


def test_threshold_override(model):
    path = real_images("NORMAL", 1)[0]
    assert model.predict(path, threshold=0.0).label == "PNEUMONIA"
    p = model.predict(path).probability
    assert model.predict(path, threshold=min(1.0, p + 1e-3)).label == "NORMAL"
    with pytest.raises(ValueError):
        model.predict(path, threshold=1.5)


def test_many_inputs_keep_order_and_bad_ones_do_not_stop_the_rest(model, tmp_path):
    good = real_images("NORMAL", 2) + real_images("PNEUMONIA", 2)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"<html>not an x-ray</html>")
    inputs = [good[0], broken, good[1], np.zeros((4, 4, 2)), good[2], good[3]]
    results = model.predict(inputs)
    assert [r.ok for r in results] == [True, False, True, False, True, True]
    assert results[1].source == str(broken) and "not a recognised image" in results[1].error
    assert results[3].source == "inputs[3]" and "shape" in results[3].error
    assert np.isnan(results[1].probability) and results[1].label is None
    assert [r.source for r in results if r.ok] == [str(p) for p in good]


def test_folder_is_searched_recursively_in_sorted_order(model, tmp_path):
    (tmp_path / "b").mkdir()
    names = []
    for i, path in enumerate(real_images("PNEUMONIA", 3)):
        target = tmp_path / ("b" if i else "") / f"{i}.jpeg"
        target.write_bytes(path.read_bytes())
        names.append(str(target))
    (tmp_path / "notes.txt").write_text("not an image")
    results = model.predict(tmp_path)
    assert sorted(r.source for r in results) == sorted(names)
    assert all(r.ok for r in results)


def test_single_bad_input_raises_an_error_naming_it(model, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(pneumocnn.InputError, match="empty.png"):
        model.predict(empty)
    with pytest.raises(pneumocnn.InputError, match="missing.jpeg"):
        model.predict(tmp_path / "missing.jpeg")


@pytest.mark.parametrize("folder, count", [
    (FULL_RESOLUTION, 3),
    pytest.param(FULL_DATA / "full_resolution", 46, marks=pytest.mark.full_data),
], ids=["shipped", "full"])
def test_full_size_clinic_images(model, folder, count):
    files = sorted(folder.rglob("*.jpeg"))
    assert len(files) == count
    results = model.predict(files)
    assert all(r.ok for r in results)


def test_one_model_shared_by_eight_threads_gives_the_serial_answers(model):
    files = real_images("NORMAL", 6) + real_images("PNEUMONIA", 6)
    serial = [model.predict(f).probability for f in files]
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: [model.predict(f).probability for f in files], range(8)))
    for run in runs:
        assert run == serial


def test_interpreter_threads_default_to_all_cores_and_can_be_set(int8_path):
    import os

    assert pneumocnn.load(int8_path).backend.threads == os.cpu_count()
    assert pneumocnn.load(int8_path, threads=1).backend.threads == 1


def test_float_input_model_gives_the_int8_models_answers():
    """The dynamic-range model of the tiny run takes float32 inputs: every input kind gives it
    one answer, close to the full-integer model's."""
    float_model, int8_model = pneumocnn.load(TINY_FLOAT), pneumocnn.load(TINY_INT8)
    assert float_model.description.info["quantization"] == "dynamic-int8"
    files = real_images("NORMAL", 4) + real_images("PNEUMONIA", 4)
    p_float = np.array([r.probability for r in float_model.predict(files)])
    p_int8 = np.array([r.probability for r in int8_model.predict(files)])
    assert np.abs(p_float - p_int8).mean() < 0.05
    pixels = np.asarray(Image.open(files[0]).convert("L"))
    answers = [float_model.predict(item).probability
               for item in (files[0], files[0].read_bytes(), pixels, pixels / 255.0)]
    assert np.allclose(answers, answers[0], atol=1e-6), answers


@pytest.mark.training
def test_keras_model_loads_through_the_same_interface(tiny_run):
    model = pneumocnn.load(tiny_run.keras_model)
    result = model.predict(real_images("NORMAL", 1)[0])
    assert result.label in ("NORMAL", "PNEUMONIA")


@pytest.mark.training
def test_backends_share_one_protocol_and_only_keras_has_grad_cam(tiny_run):
    """TFLite and Keras backends take the same uint8 pixels, as load_pixels gives them, and
    give the same raw probabilities; ``Model.probabilities`` takes only such pixels."""
    from pneumocnn.core.preprocessing import load_pixels, to_model_inputs
    from pneumocnn.runtime.backends import Backend, ClassActivationBackend

    keras_model = pneumocnn.load(tiny_run.keras_model)
    spec = keras_model.description.preprocessing
    pixels = np.stack([load_pixels(path, spec) for path in real_images("PNEUMONIA", 3)])
    raw = keras_model.backend.probabilities(pixels)
    assert raw.shape == (3,) and raw.dtype == np.float64
    assert keras_model.backend.probabilities(pixels[:0]).shape == (0,)
    assert isinstance(keras_model.backend, ClassActivationBackend)
    for quantization in ("float32", "int8"):
        backend = pneumocnn.load(tiny_run.tflite_models[quantization]).backend
        assert isinstance(backend, Backend) and not isinstance(backend, ClassActivationBackend)
        if quantization == "float32":
            assert np.allclose(backend.probabilities(pixels), raw, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 pixels"):
        keras_model.probabilities(to_model_inputs(pixels, spec))


@pytest.mark.parametrize("content, message", [
    (b"", "not a TFLite model"),
    (b"\x00" * 64, "not a TFLite model"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a TFLite"),
])
def test_files_that_are_not_models_are_refused(tmp_path, content, message):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(pneumocnn.ModelFileError, match=message):
        pneumocnn.load(path)


def test_truncated_model_is_refused(int8_path, tmp_path):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(int8_path.read_bytes()[:5000])
    with pytest.raises(pneumocnn.ModelFileError):
        pneumocnn.load(path)


@pytest.mark.training
def test_model_without_description_is_refused(tiny_run, tmp_path):
    import keras
    import tensorflow as tf

    plain = tf.lite.TFLiteConverter.from_keras_model(
        keras.saving.load_model(tiny_run.keras_model)).convert()
    path = tmp_path / "plain.tflite"
    path.write_bytes(plain)
    with pytest.raises(pneumocnn.ModelFileError, match="no pneumocnn description"):
        pneumocnn.load(path)


def test_description_that_disagrees_with_the_tensors_is_refused(int8_path, tmp_path):
    wrong = ModelDescription(preprocessing=Preprocessing(height=32, width=32))
    path = tmp_path / "wrong.tflite"
    path.write_bytes(embed_in_tflite(int8_path.read_bytes(), wrong))
    with pytest.raises(pneumocnn.ModelFileError, match="disagrees"):
        pneumocnn.load(path)


@pytest.mark.parametrize("text, message", [
    (b"{not json", "not valid JSON"),
    (b'{"format": "pneumocnn-model", "version": 99}', "newer"),
    (b'{"format": "something-else"}', "not a pneumocnn description"),
    (b'{"format": "pneumocnn-model", "version": 1}', "incomplete"),
])
def test_bad_descriptions_are_refused(text, message):
    with pytest.raises(pneumocnn.ModelFileError, match=message):
        ModelDescription.from_json(text, "model.tflite")


def test_description_round_trips_through_the_file(int8_path):
    original = read_from_tflite(int8_path.read_bytes(), "int8")
    changed = dataclasses.replace(original, threshold=0.25)
    again = read_from_tflite(embed_in_tflite(int8_path.read_bytes(), changed), "copy")
    assert again == changed
    biased = dataclasses.replace(original, temperature=0.8, bias=1.5)
    again = read_from_tflite(embed_in_tflite(int8_path.read_bytes(), biased), "copy")
    assert again == biased


def test_calibration_bias_needs_description_version_2():
    """A description without a bias stays version 1 (readable by pneumocnn 0.1.0); one with a
    bias is version 2, which 0.1.0 refuses rather than misreading the probability."""
    import json

    from pneumocnn.core.modelfile import ModelDescription

    plain, biased = ModelDescription(temperature=0.7), ModelDescription(temperature=0.7, bias=1.5)
    assert json.loads(plain.to_json())["version"] == 1
    assert json.loads(biased.to_json())["version"] == 2
    assert ModelDescription.from_json(biased.to_json(), "m") == biased
    p = np.array([0.2, 0.5, 0.9])
    logits = np.log(p / (1 - p))
    np.testing.assert_allclose(biased.calibrate(p), 1 / (1 + np.exp(-(logits / 0.7 + 1.5))))
    with pytest.raises(ValueError, match="bias must be finite"):
        ModelDescription(bias=float("nan"))


def _run_without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing ``modules`` fails."""
    blocker = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)],
                          capture_output=True, text=True)


@pytest.mark.training
def test_falls_back_to_tensorflow_interpreter_without_litert(int8_path):
    image = real_images("NORMAL", 1)[0]
    expected = pneumocnn.load(int8_path).predict(image).probability
    result = _run_without(["ai_edge_litert", "tflite_runtime"], f"""
        import pneumocnn
        print(pneumocnn.load({str(int8_path)!r}).predict({str(image)!r}).probability)
    """)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) == pytest.approx(expected, abs=1e-6)


def test_clear_error_when_no_tflite_runtime_is_installed(int8_path):
    result = _run_without(["ai_edge_litert", "tflite_runtime", "tensorflow"], f"""
        import pneumocnn
        try:
            pneumocnn.load({str(int8_path)!r})
        except pneumocnn.MissingDependencyError as error:
            print("refused:", error)
    """)
    assert "refused:" in result.stdout and "pip install ai-edge-litert" in result.stdout
