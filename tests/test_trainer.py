"""pneumocnn.training.trainer: real runs of the tiny recipe on the shipped X-rays: the run
folder, settings reaching the model file, resume after kill -9, faults while training."""

from __future__ import annotations

import errno
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
from helpers import TINY_SETTINGS, real_images, trained_and_averaged
from PIL import Image
from test_durable_files import _no_space

import pneumocnn
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.modelfile import read_tflite_description

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


# ---------------------------------------------------------------------------------------------
# a run and its folder


def test_run_folder_holds_every_artifact(tiny_run):
    run = tiny_run.run_dir
    for name in ("model.keras", "history.csv", "curves.png", "metrics.json", "report.md",
                 "config.json", "reliability.png"):
        assert (run / name).stat().st_size > 0, name
    assert set(tiny_run.tflite_models) == {"float32", "float16", "dynamic-int8", "int8"}
    assert len(tiny_run.history) == 2
    report = (run / "report.md").read_text()
    assert "- validation (patients, fraction " in report and "TFLite int8" in report
    assert not list(run.glob("**/*.tmp")), "no half-written files are left behind"


def test_existing_run_folder_is_not_overwritten(tiny_run, tiny_data):
    with pytest.raises(DatasetError, match="resume"):
        pneumocnn.train(tiny_data, tiny_run.run_dir, **TINY_SETTINGS)


def test_a_run_folder_in_use_is_refused(tiny_data, tmp_path):
    from pneumocnn.core.durable_files import exclusive_lock

    run = tmp_path / "busy"
    with exclusive_lock(run / ".lock", "test"), pytest.raises(pneumocnn.PneumocnnError,
                                                              match="in use"):
        pneumocnn.train(tiny_data, run, **TINY_SETTINGS)


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


# ---------------------------------------------------------------------------------------------
# architectures and settings reach the model


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


def test_every_named_architecture_builds_with_its_head():
    from pneumocnn.training.architectures import ARCHITECTURES
    from pneumocnn.training.settings import ARCHITECTURE_NAMES

    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES
    for architecture in ARCHITECTURES.values():
        model = architecture.build((32, 32, 1), architecture.outputs)
        assert model.output_shape == (None, architecture.outputs), architecture.name


def test_separable_architecture_with_shift_augmentation_trains_exports_and_agrees(
        tiny_data, tmp_path):
    import keras

    settings = {**TINY_SETTINGS, "epochs": 1, "architecture": "small-sep",
                "augmentation": "shift"}
    result = pneumocnn.train(tiny_data, tmp_path / "small-sep", **settings)
    assert result.tflite_models["int8"].stat().st_size < 500_000
    layers = keras.saving.load_model(result.keras_model).layers
    assert sum(isinstance(layer, keras.layers.SeparableConv2D) for layer in layers) == 4
    keras_model = pneumocnn.load(result.keras_model)
    float32 = pneumocnn.load(result.tflite_models["float32"])
    image = real_images("NORMAL", 1)[0]
    assert keras_model.predict(image).probability == pytest.approx(
        float32.predict(image).probability, abs=1e-4)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        pneumocnn.train(tiny_data, tmp_path / "bad", **{**settings, "augmentation": "wild"})
    with pytest.raises(ValueError, match="architecture must be one of"):
        pneumocnn.train(tiny_data, tmp_path / "bad", **{**settings, "architecture": "resnet"})


def test_mixup_trains_on_blended_targets_without_a_meaningless_accuracy(tiny_data, tmp_path):
    settings = {**TINY_SETTINGS, "epochs": 1, "augmentation": "shift-zoom-mixup"}
    result = pneumocnn.train(tiny_data, tmp_path / "mixup", **settings)
    (row,) = result.history
    assert "accuracy" not in row and np.isfinite(row["loss"]) and "val_accuracy" in row
    assert result.metrics["tflite"]["int8"]["accuracy"] > 0
    assert '"augmentation": "shift-zoom-mixup"' in (result.run_dir / "report.md").read_text()


def test_keep_best_exports_the_epoch_with_the_lowest_validation_loss(tiny_data, tmp_path):
    import keras

    settings = {**TINY_SETTINGS, "epochs": 3, "keep_best": True, "recalibrate_batchnorm": False}
    result = pneumocnn.train(tiny_data, tmp_path / "best", **settings)
    losses = [row["val_loss"] for row in result.history]
    best_epoch = int(np.argmin(losses)) + 1
    described = read_tflite_description(result.tflite_models["int8"].read_bytes(), "int8")
    assert described.info["provenance"]["exported_epoch"] == best_epoch
    assert f"exported epoch: {best_epoch} (lowest validation loss)" in (
        result.run_dir / "report.md").read_text()
    best = keras.saving.load_model(result.run_dir / "checkpoints" / "best.keras").get_weights()
    for a, b in zip(best, keras.saving.load_model(result.keras_model).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weight_averaging_exports_the_average_and_trains_on_the_weights(tiny_data, tmp_path):
    """With ``ema_momentum`` the checkpoints hold the training weights (not the average
    ``fit`` leaves behind), their optimizer the average, and the exported model that average."""
    import keras

    settings = {**TINY_SETTINGS, "epochs": 2, "ema_momentum": 0.5, "recalibrate_batchnorm": False}
    result = pneumocnn.train(tiny_data, tmp_path / "ema", **settings)
    trained, averaged = trained_and_averaged(result.run_dir / "checkpoints" / "epoch-0002.keras")
    assert any(not np.allclose(a, b) for a, b in zip(trained, averaged, strict=True))
    exported = keras.saving.load_model(result.keras_model)
    for a, b in zip(averaged, [v.numpy() for v in exported.trainable_variables], strict=True):
        np.testing.assert_array_equal(a, b)
    assert ("exported epoch: 2 (the last), as the moving average of the weights over the "
            "training steps (momentum 0.5)") in (result.run_dir / "report.md").read_text()


@pytest.mark.parametrize("settings, message", [
    ({"ema_momentum": 1.0}, "between 0 and 1"),
    ({"ema_momentum": 0.99, "keep_best": True}, "use one of them"),
])
def test_bad_weight_averaging_settings_are_refused_before_a_run(tiny_data, tmp_path, settings,
                                                                 message):
    with pytest.raises(ValueError, match=message):
        pneumocnn.train(tiny_data, tmp_path / "bad", **{**TINY_SETTINGS, **settings})
    assert not (tmp_path / "bad" / "config.json").exists()


def test_fold_normalisation_and_compile_overrides_reach_the_model_file(tiny_data, tmp_path):
    """Validation on patient fold 1 of 3, histogram equalisation, softmax + binary CE, RMSprop
    with a cosine schedule: the run uses them, and the model file makes the runtime equalise."""
    from pneumocnn.core.labelled_data import index_folder, patient_folds

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


# ---------------------------------------------------------------------------------------------
# resume: kill -9, damaged checkpoints, a full disk, two trainers


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


@pytest.mark.training
def test_full_disk_at_a_checkpoint_then_resume(tiny_data, tmp_path, monkeypatch):
    """Training stops with a clear error when the disk is full at the epoch-2 checkpoint; the
    epoch-1 checkpoint is intact and a resumed run finishes from it."""
    real_fsync = os.fsync

    def fsync(handle: int) -> None:
        if "epoch-0002" in os.readlink(f"/proc/self/fd/{handle}"):
            _no_space()
        real_fsync(handle)

    settings = {**TINY_SETTINGS, "epochs": 3, "input_size": 32}
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="epoch-0002.keras.*previous file") as caught:
        pneumocnn.train(tiny_data, tmp_path / "run", **settings)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0001.keras", "state.json"]
    result = pneumocnn.train(tiny_data, tmp_path / "run", resume=True, **settings)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert pneumocnn.load(result.tflite_models["int8"]).predict(np.full((8, 8), 0.5)).ok


KILL_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import pneumocnn
    pneumocnn.train(sys.argv[1], sys.argv[2], resume=True, verbose=0, epochs=20, batch_size=8,
                    input_size=96, representative_images=8, validation_fraction=0.25)
""")


def complete_epochs(run: Path) -> int:
    """The newest epoch with a checkpoint file in ``run`` (0 if none)."""
    names = [p.name for p in (run / "checkpoints").glob("epoch-*.keras")]
    return max((int(name[6:10]) for name in names), default=0)


def check_model_files(run: Path) -> int:
    """Load every model file present in ``run``; return how many there are."""
    import keras

    files = [p for p in run.rglob("*") if p.suffix in (".keras", ".tflite") and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(run).parts)]
    for path in files:
        if path.parent.name == "checkpoints":
            keras.saving.load_model(path)
        else:
            assert pneumocnn.load(path).predict(np.full((8, 8), 0.5)).ok, path
    return len(files)


def resumed_from(log: str) -> int | None:
    """The epoch a run resumed after, from its log; None if it was killed before saying."""
    found = [int(line.split()[-1]) for line in log.splitlines()
             if line.startswith("resuming after epoch")]
    return found[0] if found else None


@pytest.mark.training
@pytest.mark.slow
def test_ten_kills_at_random_moments_then_the_run_finishes(tiny_data, tmp_path):
    """kill -9 at a random moment, resume, 10 times in a row: every model file present is
    complete, at most one finished epoch is lost per kill, and the final model equals an
    uninterrupted run's."""
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    reference, run = tmp_path / "reference", tmp_path / "run"
    started = time.monotonic()
    subprocess.run([sys.executable, str(script), str(tiny_data), str(reference)], check=True,
                   capture_output=True)
    duration = time.monotonic() - started
    history = json.loads((reference / "checkpoints" / "state.json").read_text())["history"]
    epoch_s = float(np.mean([row["seconds"] for row in history]))
    rng = np.random.default_rng(6)
    runs: list[dict] = []
    while sum(not r["finished"] for r in runs) < 10:
        done_before = complete_epochs(run)
        # a random moment before the run would end: start-up, epochs left, export
        delay = float(rng.uniform(0.5, duration - done_before * epoch_s))
        process = subprocess.Popen([sys.executable, str(script), str(tiny_data), str(run)],
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.kill()
        log = process.communicate()[1]
        runs.append({"kill_after_s": round(delay, 1), "finished": process.returncode == 0,
                     "epochs_before": done_before, "resumed_after": resumed_from(log),
                     "epochs_after": complete_epochs(run), "model_files": check_model_files(run)})
        assert len(runs) < 30
    done_before = complete_epochs(run)
    final = subprocess.run([sys.executable, str(script), str(tiny_data), str(run)],
                           capture_output=True, text=True, check=True)
    runs.append({"finished": True, "epochs_before": done_before,
                 "resumed_after": resumed_from(final.stderr)})
    print(json.dumps({"uninterrupted_s": round(duration, 1), "runs": runs}))
    for entry in runs:
        if entry["resumed_after"] is not None:  # at most one finished epoch lost to a kill
            assert entry["epochs_before"] - entry["resumed_after"] <= 1, runs
    history = json.loads((run / "checkpoints" / "state.json").read_text())["history"]
    assert [row["epoch"] for row in history] == list(range(1, 21))
    assert check_model_files(run) == 7  # model.keras, 4 .tflite, 2 checkpoints
    assert not list(run.rglob("*.tmp")), "temporaries of killed writers are cleaned up"
    import keras

    final_weights = keras.saving.load_model(run / "model.keras").get_weights()
    reference_weights = keras.saving.load_model(reference / "model.keras").get_weights()
    for a, b in zip(reference_weights, final_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.training
def test_a_second_trainer_on_the_same_run_folder_is_refused(tiny_data, tmp_path):
    """Two real processes: while one trains into a run folder, another is refused (exit 2);
    the lock dies with its holder, even on kill -9."""
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(script), str(tiny_data), str(run)],
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.json").exists() and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "pneumocnn", "train", str(tiny_data), "--out", str(run),
             "--resume", "--epochs", "8"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"run folder {run} is in use by another process" in second.stderr
        assert first.poll() is None, "the first trainer goes on"
    finally:
        first.kill()
        first.wait()
    from pneumocnn.core.durable_files import exclusive_lock

    with exclusive_lock(run / ".lock", "run folder"):
        pass
