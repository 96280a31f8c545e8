"""The command line: predict output formats and exit codes, evaluate, info, convert."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_INT8, XRAYS, real_images

import pneumocnn
from pneumocnn.cli import main


def test_predict_prints_one_line_per_image_and_exits_0(capsys):
    files = [str(p) for p in real_images("NORMAL", 2)]
    assert main(["predict", *files, "--model", str(TINY_INT8)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("probability" in line for line in lines)


def test_predict_reports_bad_files_goes_on_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"garbage")
    good = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "out.csv"
    code = main(["predict", good, str(bad), "--model", str(TINY_INT8),
                 "--csv", str(out)])
    assert code == 1
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [good, str(bad)]
    assert rows[0]["label"] in ("NORMAL", "PNEUMONIA") and rows[1]["error"]
    assert "1 input(s) could not be scored" in capsys.readouterr().err


def test_predict_json_lines(capsys):
    image = str(real_images("NORMAL", 1)[0])
    assert main(["predict", image, "--json", "--model", str(TINY_INT8)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == image and record["error"] is None


@pytest.mark.parametrize("argv", [
    ["predict"],
    ["predict", "x.jpeg", "--model", "/no/such/model.tflite"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits by itself on bad syntax
        code = exit_.code
    assert code == 2


def test_console_script_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "pneumocnn", "info", str(TINY_INT8)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"format": "pneumocnn-model"' in result.stdout


def test_evaluate_writes_metrics_and_figures(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", str(TINY_INT8), str(XRAYS),
                 "--out", str(out), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 48 and sum(map(sum, metrics["confusion"])) == 48
    for name in ("metrics.json", "predictions.csv", "roc.png", "confusion.png", "reliability.png"):
        assert (out / name).stat().st_size > 0


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

    expected = float(seed_model(preprocess(image, converted.description.preprocessing)[None])[0, 0])
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
def test_train_options_default_to_the_recipe(monkeypatch, tmp_path):
    """``pneumocnn train DATA`` trains exactly ``pneumocnn.train(DATA)``; flags override the
    recipe and reach the run; ``--recipe seed`` is the seed report's recipe."""
    import dataclasses

    from pneumocnn.training import trainer

    seen = []

    def fake_train(data, out, recipe, resume, verbose, **settings):
        seen.append(trainer.make_config(recipe, **settings))
        raise pneumocnn.core.errors.DatasetError("stop here")

    monkeypatch.setattr(trainer, "train", fake_train)
    assert main(["train", str(tmp_path)]) == 2
    assert seen[-1] == trainer.TrainingConfig()
    main(["train", str(tmp_path), "--no-keep-best", "--normalize", "autocontrast", "--fold", "2",
          "--optimizer", "rmsprop", "--threshold", "sensitivity", "--augmentation", "shift-flip",
          "--class-weight", "none", "--recalibrate-batchnorm"])
    changed = {f.name for f in dataclasses.fields(trainer.TrainingConfig)
               if getattr(seen[-1], f.name) != getattr(trainer.TrainingConfig(), f.name)}
    assert changed <= {"keep_best", "normalize", "fold", "optimizer", "threshold", "augmentation",
                       "class_weight", "recalibrate_batchnorm"}
    assert seen[-1].recalibrate_batchnorm is True
    assert (seen[-1].normalize, seen[-1].fold, seen[-1].optimizer, seen[-1].threshold,
            seen[-1].augmentation) == ("autocontrast", 2, "rmsprop", "sensitivity", "shift-flip")
    assert seen[-1].keep_best is False and seen[-1].class_weight is None
    main(["train", str(tmp_path), "--recipe", "seed", "--epochs", "3"])
    assert seen[-1] == dataclasses.replace(trainer.make_config("seed"), epochs=3)
    assert (seen[-1].architecture, seen[-1].augmentation, seen[-1].threshold) == (
        "seed-to-be", "seed", 0.5)
    main(["train", str(tmp_path), "--recipe", "seed", "--seed", "7"])  # --seed: the random seed
    assert seen[-1] == dataclasses.replace(trainer.make_config("seed"), random_seed=7)


def test_train_help_says_seed_is_the_random_seed(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--seed RANDOM_SEED    random seed" in capsys.readouterr().out
