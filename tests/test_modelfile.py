"""pneumocnn.core.modelfile: the model description (JSON, versions, calibration) as
embedded in .tflite and .keras files, and files refused for what they hold: not a model,
truncated, no description, a .keras that could run code. Every damaged file here is written
by the test (RELIABILITY.md lists the figures)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pneumocnn
from pneumocnn.core.modelfile import ModelDescription, embed_in_tflite, read_tflite_description
from pneumocnn.core.preprocessing import Preprocessing

# ---------------------------------------------------------------------------------------------
# the description


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
    original = read_tflite_description(int8_path.read_bytes(), "int8")
    changed = dataclasses.replace(original, threshold=0.25)
    again = read_tflite_description(embed_in_tflite(int8_path.read_bytes(), changed), "copy")
    assert again == changed
    biased = dataclasses.replace(original, temperature=0.8, bias=1.5)
    again = read_tflite_description(embed_in_tflite(int8_path.read_bytes(), biased), "copy")
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


# ---------------------------------------------------------------------------------------------
# files that are not pneumocnn models


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


# ---------------------------------------------------------------------------------------------
# .keras files that could run code; nothing is ever unpickled


REPO = Path(__file__).resolve().parents[1]


KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import keras
    import pneumocnn
    from pneumocnn.runtime.backends import KerasBackend
    outcomes = {}
    try:  # Keras itself, in the safe mode pneumocnn asks for
        KerasBackend(Path(sys.argv[1]))
        outcomes["keras safe mode"] = ["loaded", ""]
    except pneumocnn.ModelFileError as error:
        outcomes["keras safe mode"] = ["refused", error.reason]
    keras.config.enable_unsafe_deserialization()  # as some other code in the process might
    for path in sys.argv[1:]:
        print(path, file=sys.stderr, flush=True)
        try:
            pneumocnn.load(path)
            outcomes[Path(path).name] = ["loaded", ""]
        except pneumocnn.ModelFileError as error:
            outcomes[Path(path).name] = ["refused", error.reason]
    print(json.dumps(outcomes))
""")


def keras_archive(source: Path, target: Path, **replace: bytes) -> None:
    """Copy a ``.keras`` archive, replacing (or adding) members."""
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, replace.pop(name) if name in replace else old.read(name))
        for name, data in replace.items():
            new.writestr(name, data)


@pytest.mark.training
def test_keras_files_that_could_run_code_are_refused(tiny_run, tmp_path):
    """A .keras file with a Lambda layer, or naming code outside Keras, is refused, even when
    the process has switched Keras's safe mode off globally; no code from the file runs."""
    import keras

    from pneumocnn.training.export import save_keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((16, 16, 3))
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(touch)(inputs))
    lambda_model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    save_keras(lambda_model, ModelDescription(preprocessing=Preprocessing(16, 16, 3)),
               tmp_path / "lambda.keras")
    marker.unlink()  # building the model above ran the lambda; loading must not

    original = tiny_run.keras_model
    config = json.loads(__import__("zipfile").ZipFile(original).read("config.json"))
    config["config"]["layers"][1].update(module="os", class_name="system")
    keras_archive(original, tmp_path / "foreign-module.keras", **{"config.json": json.dumps(config)})
    wrong = ModelDescription(preprocessing=Preprocessing(32, 32, 3)).to_json()
    keras_archive(original, tmp_path / "wrong-shape.keras", **{"pneumocnn.json": wrong})
    keras_archive(original, tmp_path / "no-description.keras", **{"pneumocnn.json": b""})
    (tmp_path / "truncated.keras").write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    (tmp_path / "empty-zip.keras").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    names = ["lambda.keras", "foreign-module.keras", "wrong-shape.keras", "no-description.keras",
             "truncated.keras", "empty-zip.keras"]
    result = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, *(str(tmp_path / n) for n in names)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(result.stdout.splitlines()[-1])
    assert outcomes.pop("keras safe mode")[0] == "refused"
    assert {name: kind for name, (kind, _) in outcomes.items()} == dict.fromkeys(names, "refused")
    assert "keras.layers.Lambda" in outcomes["lambda.keras"][1]
    assert "os.system" in outcomes["foreign-module.keras"][1]
    assert "disagrees" in outcomes["wrong-shape.keras"][1]
    assert "not valid JSON" in outcomes["no-description.keras"][1]
    assert "not a readable .keras archive" in outcomes["truncated.keras"][1]
    assert not marker.exists()


def test_nothing_is_ever_unpickled():
    """No pickle, no marshal, no unsafe Keras or numpy loading anywhere in the library."""
    forbidden = ("import pickle", "import marshal", "allow_pickle=True", "safe_mode=False",
                 "enable_unsafe_deserialization", "import dill", "import joblib")
    for path in (REPO / "pneumocnn").rglob("*.py"):
        text = path.read_text()
        for word in forbidden:
            assert word not in text, f"{path}: {word}"
