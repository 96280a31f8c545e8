"""The training wing: a real tiny run, its files, TFLite agreement, resume after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SETTINGS, real_images
from PIL import Image

import pneumocnn
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.modelfile import read_from_tflite
from pneumocnn.training.trainer import TrainingConfig

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


def test_run_folder_holds_every_artifact(tiny_run):
    run = tiny_run.run_dir
    for name in ("model.keras", "history.csv", "curves.png", "metrics.json", "report.md",
                 "config.json", "reliability.png"):
        assert (run / name).stat().st_size > 0, name
    assert set(tiny_run.tflite_models) == {"float32", "float16", "dynamic-int8", "int8"}
    assert len(tiny_run.history) == 2
    report = (run / "report.md").read_text()
    assert "patients" in report and "TFLite int8" in report
    assert not list(run.glob("**/*.tmp")), "no half-written files are left behind"


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


def test_runtime_and_training_evaluation_agree_on_real_files(tiny_run, tiny_data):
    """The same file gives the same probability through evaluate() and predict()."""
    model = pneumocnn.load(tiny_run.tflite_models["int8"])
    evaluation = pneumocnn.evaluate(model, tiny_data)
    by_file = {p.source: p.probability for p in evaluation.predictions}
    for path in sorted(tiny_data.rglob("*.jpeg"))[:6]:
        assert model.predict(path).probability == pytest.approx(by_file[str(path)], abs=0)


def test_existing_run_folder_is_not_overwritten(tiny_run, tiny_data):
    with pytest.raises(DatasetError, match="resume"):
        pneumocnn.train(tiny_data, tiny_run.run_dir, **TINY_SETTINGS)


def test_unreadable_training_image_is_skipped_and_named(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    settings = {**TINY_SETTINGS, "epochs": 1, "validation_fraction": 0.2}
    with caplog.at_level("WARNING", logger="pneumocnn"):
        result = pneumocnn.train(data, tmp_path / "run", **settings)
    assert "broken.jpeg" in caplog.text
    assert result.keras_model.exists()


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty-class", "holds no images"),
    ("one-class", "exactly two class folders"),
])
def test_bad_training_folders_give_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        for label in ("NORMAL", "PNEUMONIA") if layout == "empty-class" else ("NORMAL",):
            (root / label).mkdir(parents=True)
        shutil.copy(real_images("NORMAL", 1)[0], root / "NORMAL")
    with pytest.raises(DatasetError, match=message):
        pneumocnn.train(root, tmp_path / "run", **TINY_SETTINGS)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import pneumocnn
    pneumocnn.train(sys.argv[1], sys.argv[2], resume=True, verbose=0, epochs=4, batch_size=8,
                    input_size=48, representative_images=8, validation_fraction=0.25)
""")


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path).get_weights()


def test_kill_and_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run([sys.executable, str(script), str(tiny_data), str(reference)], check=True)

    process = subprocess.Popen([sys.executable, str(script), str(tiny_data), str(resumed)])
    state = resumed / "checkpoints" / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and len(json.loads(state.read_text())["history"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(json.loads(state.read_text())["history"])
    assert killed_at < 4 and not (resumed / "model.keras").exists(), "killed before the end"

    subprocess.run([sys.executable, str(script), str(tiny_data), str(resumed)], check=True)
    history = json.loads((resumed / "checkpoints" / "state.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for a, b in zip(_weights(reference / "model.keras"), _weights(resumed / "model.keras"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tiny_data, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    run = tmp_path / "run"
    subprocess.run([sys.executable, str(script), str(tiny_data), str(run)], check=True)
    newest = run / "checkpoints" / "epoch-0004.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (run / "model.keras").unlink()
    resumed = subprocess.run([sys.executable, str(script), str(tiny_data), str(run)],
                             check=True, capture_output=True, text=True)
    assert "epoch-0004.keras unusable" in resumed.stderr
    history = json.loads((run / "checkpoints" / "state.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert (run / "model.keras").exists()


def test_seed_as_is_softmax_model_trains_and_runs(tiny_data, tmp_path):
    settings = {**TINY_SETTINGS, "epochs": 1, "architecture": "seed-as-is"}
    result = pneumocnn.train(tiny_data, tmp_path / "as-is", **settings)
    keras_model = pneumocnn.load(result.keras_model)
    int8 = pneumocnn.load(result.tflite_models["int8"])
    float32 = pneumocnn.load(result.tflite_models["float32"])
    assert int8.description.info["architecture"] == "seed-as-is"
    image = real_images("PNEUMONIA", 1)[0]
    assert keras_model.predict(image).probability == pytest.approx(
        float32.predict(image).probability, abs=1e-4)
    assert 0.0 <= int8.predict(image).probability <= 1.0


def test_a_run_folder_in_use_is_refused(tiny_data, tmp_path):
    from pneumocnn.core.files import exclusive_lock

    run = tmp_path / "busy"
    with exclusive_lock(run / ".lock", "test"), pytest.raises(pneumocnn.PneumocnnError,
                                                              match="in use"):
        pneumocnn.train(tiny_data, run, **TINY_SETTINGS)


def test_small_bn_with_shift_augmentation_trains_exports_and_agrees(tiny_data, tmp_path):
    settings = {**TINY_SETTINGS, "epochs": 1, "architecture": "small-bn",
                "augmentation": "shift"}
    result = pneumocnn.train(tiny_data, tmp_path / "small-bn", **settings)
    assert result.tflite_models["int8"].stat().st_size < 500_000
    keras_model = pneumocnn.load(result.keras_model)
    float32 = pneumocnn.load(result.tflite_models["float32"])
    image = real_images("NORMAL", 1)[0]
    assert keras_model.predict(image).probability == pytest.approx(
        float32.predict(image).probability, abs=1e-4)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        pneumocnn.train(tiny_data, tmp_path / "bad", **{**settings, "augmentation": "wild"})


def test_shift_augmentation_is_deterministic_and_in_range():
    import tensorflow as tf

    from pneumocnn.training.augmentations import SEED_AUGMENTATION, SHIFT_AUGMENTATION
    from pneumocnn.training.data import _augment

    images = tf.constant(np.random.default_rng(0).random((4, 32, 32, 1)), tf.float32)
    seed = tf.constant([3, 7], tf.int64)
    first = _augment(images, SHIFT_AUGMENTATION, seed).numpy()
    again = _augment(images, SHIFT_AUGMENTATION, seed).numpy()
    other = _augment(images, SHIFT_AUGMENTATION, tf.constant([3, 8], tf.int64)).numpy()
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not np.allclose(first, _augment(images, SEED_AUGMENTATION, seed).numpy())


def test_keep_best_exports_the_epoch_with_the_lowest_validation_loss(tiny_data, tmp_path):
    import keras

    settings = {**TINY_SETTINGS, "epochs": 3, "keep_best": True, "recalibrate_batchnorm": False}
    result = pneumocnn.train(tiny_data, tmp_path / "best", **settings)
    losses = [row["val_loss"] for row in result.history]
    best_epoch = int(np.argmin(losses)) + 1
    described = read_from_tflite(result.tflite_models["int8"].read_bytes(), "int8")
    assert described.info["provenance"]["exported_epoch"] == best_epoch
    assert f"exported epoch: {best_epoch} (lowest validation loss)" in (
        result.run_dir / "report.md").read_text()
    best = keras.saving.load_model(result.run_dir / "checkpoints" / "best.keras").get_weights()
    for a, b in zip(best, keras.saving.load_model(result.keras_model).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fold_normalisation_and_compile_overrides_reach_the_model_file(tiny_data, tmp_path):
    """Validation on patient fold 1 of 3, histogram equalisation, softmax + binary CE, RMSprop
    with a cosine schedule: the run uses them, and the model file makes the runtime equalise."""
    from pneumocnn.core.folders import index_folder, patient_folds

    settings = {**TINY_SETTINGS, "epochs": 1, "fold": 1, "folds": 3, "normalize": "equalize",
                "architecture": "seed-to-be",
                "output": "softmax", "loss": "binary_crossentropy", "optimizer": "rmsprop",
                "schedule": "cosine"}
    result = pneumocnn.train(tiny_data, tmp_path / "fold", **settings)
    images = index_folder(tiny_data)
    expected = int((patient_folds(images, 3, seed=0) == 1).sum())
    assert result.metrics["validation"]["n"] == expected
    keras_model = pneumocnn.load(result.keras_model)
    float32 = pneumocnn.load(result.tflite_models["float32"])
    assert float32.description.preprocessing.normalize == "equalize"
    assert keras_model.description.info["provenance"]["config"]["optimizer"] == "rmsprop"
    assert float32.description.info["architecture"] == "seed-to-be"
    import keras

    saved = keras.saving.load_model(result.keras_model)
    assert saved.output_shape == (None, 2) and saved.loss == "binary_crossentropy"
    assert isinstance(saved.optimizer, keras.optimizers.RMSprop)
    assert int(saved.optimizer.iterations) > 0
    assert float(saved.optimizer.learning_rate) < 1e-6  # decayed to 0 by the last step
    image = real_images("PNEUMONIA", 1, start=5)[0]
    assert keras_model.predict(image).probability == pytest.approx(
        float32.predict(image).probability, abs=1e-4)
    plain = float32.predict(image).probability
    flat = Image.open(image).convert("L").point(lambda v: 120 + v * 100 // 255)
    assert float32.predict(flat).probability == pytest.approx(plain, abs=0.05)
    with pytest.raises(ValueError, match="fold must lie in"):
        pneumocnn.train(tiny_data, tmp_path / "bad-fold", **{**settings, "fold": 3})
    with pytest.raises(ValueError, match="output must be"):
        pneumocnn.train(tiny_data, tmp_path / "bad-output", **{**settings, "output": "tanh"})


def test_runs_saved_before_a_setting_existed_keep_their_meaning(tmp_path):
    """A config.json written before schedule, normalize, augmentation, keep_best... existed
    (pneumocnn 0.1.0's, as in runs/seed) resumes and is scored as the run was trained; its
    ``seed`` is the random seed, now ``random_seed``."""
    from pneumocnn.training.settings import RENAMED_SETTINGS, saved_config

    old = {"architecture": "seed-to-be", "epochs": 50, "batch_size": 16, "learning_rate": None,
           "input_size": 150, "channels": 3, "augment": True, "class_weight": None,
           "validation": "patients", "validation_fraction": 0.1, "early_stopping": None,
           "seed": 0, "threshold": 0.5, "target_sensitivity": 0.95, "calibrate": True,
           "representative_images": 300}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = saved_config(tmp_path)
    assert (config.schedule, config.normalize, config.augmentation, config.keep_best,
            config.fold) == ("constant", "none", "seed", False, None)
    assert config != TrainingConfig()
    assert {k: getattr(config, RENAMED_SETTINGS.get(k, k)) for k in old} == old
    assert config.random_seed == 0


def test_batchnorm_statistics_are_re_estimated_on_clean_training_images(tiny_data, tmp_path):
    import keras

    from pneumocnn.core.preprocessing import load_pixels, to_model_input
    from pneumocnn.training.trainer import saved_config, split

    settings = {**TINY_SETTINGS, "epochs": 1, "architecture": "small-bn", "keep_best": False,
                "recalibrate_batchnorm": True}
    result = pneumocnn.train(tiny_data, tmp_path / "bn", **settings)
    model = keras.saving.load_model(result.keras_model)
    config = saved_config(result.run_dir)
    spec = config.preprocessing()
    train_images = split(tiny_data, config)[0]
    inputs = np.stack([to_model_input(load_pixels(p, spec), spec) for p in train_images.paths])
    conv, norm = model.layers[0], model.layers[1]
    assert isinstance(norm, keras.layers.BatchNormalization) and norm.momentum == 0.99
    features = np.asarray(conv(inputs))
    # the mean over batches of 8 of the batch means: the overall mean, up to the last batch
    np.testing.assert_allclose(np.asarray(norm.moving_mean), features.mean(axis=(0, 1, 2)),
                               rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), features.var(axis=(0, 1, 2)),
                               rtol=0.2, atol=1e-3)
    float32 = pneumocnn.load(result.tflite_models["float32"])
    image = real_images("NORMAL", 1, start=5)[0]
    assert pneumocnn.load(result.keras_model).predict(image).probability == pytest.approx(
        float32.predict(image).probability, abs=1e-4)


def test_training_batches_are_shuffled_with_or_without_augmentation():
    """Class folders are read in order: unshuffled training batches would hold one class at a
    time (a run without augmentation collapsed that way before this was fixed)."""
    from pneumocnn.core.preprocessing import Preprocessing
    from pneumocnn.training.data import DecodedImages, make_dataset

    labels = np.repeat([0, 1], 32)
    data = DecodedImages(np.zeros((64, 8, 8), np.uint8), labels, tuple(), ())
    spec = Preprocessing(height=8, width=8, channels=1)

    def order(**options) -> np.ndarray:
        return np.concatenate([t.numpy().ravel() for _, t in make_dataset(data, spec, 8, **options)])

    assert np.array_equal(order(), labels)  # evaluation keeps the order
    shuffled = order(shuffle=True, seed=0, epoch=0)
    assert sorted(shuffled) == sorted(labels) and not np.array_equal(shuffled, labels)
    assert np.array_equal(shuffled, order(shuffle=True, seed=0, epoch=0))
    assert not np.array_equal(shuffled, order(shuffle=True, seed=0, epoch=1))
    first_batches = shuffled[:32]
    assert 0 < first_batches.mean() < 1  # both classes early in the epoch
