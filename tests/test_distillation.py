"""pneumocnn.training.distillation: teachers' targets on the augmented batch, a distilled run
that learns them instead of the labels, and teachers refused before a run writes anything."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from helpers import TINY_SETTINGS, TINY_SIZE

import pneumocnn
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.modelfile import read_keras_description
from pneumocnn.core.preprocessing import load_pixels, to_model_inputs

pytestmark = pytest.mark.training


def _constant_teacher(tiny_run, probability: float, path):
    """The tiny run's model with its head replaced by a constant ``probability``, saved with
    the run's description as a pneumocnn ``.keras`` file."""
    import keras

    from pneumocnn.training.export import save_keras

    model = keras.saving.load_model(tiny_run.keras_model)
    kernel, _ = model.layers[-1].get_weights()
    logit = np.log(probability / (1 - probability))
    model.layers[-1].set_weights([np.zeros_like(kernel), np.full(1, logit, np.float32)])
    save_keras(model, read_keras_description(tiny_run.keras_model), path)
    return path


def test_targets_are_the_teachers_mean_on_the_same_augmented_batch(tiny_run, tiny_data, tmp_path):
    from pneumocnn.training.augmentations import AUGMENTATIONS
    from pneumocnn.training.data import decode_all, make_dataset
    from pneumocnn.training.distillation import load_teachers, with_teacher_targets
    from pneumocnn.training.settings import make_config
    from pneumocnn.training.splits import split

    config = make_config(**{k: v for k, v in TINY_SETTINGS.items() if k != "verbose"})
    spec = config.preprocessing()
    decoded = decode_all(split(tiny_data, config)[0], spec, None)
    constant = _constant_teacher(tiny_run, 0.2, tmp_path / "constant.keras")
    teachers = load_teachers([str(tiny_run.keras_model), str(constant)], spec)
    augmented = make_dataset(decoded, spec, 8, augmentation=AUGMENTATIONS["shift-zoom"], seed=3)
    trained = teachers[0]
    for one_hot in (False, True):
        pairs = list(with_teacher_targets(augmented, teachers, one_hot))
        images = np.concatenate([x.numpy() for x, _ in pairs])
        targets = np.concatenate([t.numpy() for _, t in pairs])
        expected = (trained.predict(images, verbose=0)[:, 0] + 0.2) / 2
        assert targets[:, -1] == pytest.approx(expected, abs=1e-5)
        if one_hot:
            assert targets.sum(axis=1) == pytest.approx(np.ones(len(targets)), abs=1e-6)
    assert not np.allclose(images, to_model_inputs(decoded.pixels, spec))  # augmented views


def test_a_distilled_run_learns_its_teacher_not_the_labels(tiny_run, tiny_data, tmp_path):
    import keras

    teacher = _constant_teacher(tiny_run, 0.1, tmp_path / "teacher.keras")
    settings = {**TINY_SETTINGS, "epochs": 4, "learning_rate": 0.01, "calibrate": False}
    student = pneumocnn.train(tiny_data, tmp_path / "student", teachers=[str(teacher)], **settings)
    labels_only = pneumocnn.train(tiny_data, tmp_path / "labels", **settings)
    images = [p for d in ("NORMAL", "PNEUMONIA") for p in sorted((tiny_data / d).iterdir())]
    spec = read_keras_description(student.keras_model).preprocessing
    inputs = to_model_inputs(np.stack([load_pixels(p, spec)
                                       for p in images]), spec)

    def mean_probability(run) -> float:
        return float(keras.saving.load_model(run.keras_model).predict(inputs, verbose=0).mean())

    assert mean_probability(student) < 0.3 < mean_probability(labels_only)
    assert "accuracy" not in student.history[0] and "val_accuracy" in student.history[0]
    saved = json.loads((student.run_dir / "config.json").read_text())
    assert saved["teachers"] == [str(teacher)]
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    provenance = read_keras_description(student.keras_model).info["provenance"]
    assert provenance["teachers"] == {str(teacher): digest}
    assert f"- distilled: trained on the mean probability of 1 teacher(s) on each augmented image, " \
        f"not on the labels: {teacher}" in (student.run_dir / "report.md").read_text()


def test_a_teacher_with_other_preprocessing_is_refused_before_the_run_writes(
        tiny_run, tiny_data, tmp_path):
    settings = {**TINY_SETTINGS, "input_size": TINY_SIZE // 2}
    with pytest.raises(ValueError, match=r"model\.keras: the teacher's preprocessing"):
        pneumocnn.train(tiny_data, tmp_path / "run", teachers=[str(tiny_run.keras_model)],
                        **settings)
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(ValueError, match="takes no class_weight"):
        pneumocnn.train(tiny_data, tmp_path / "run3", teachers=[str(tiny_run.keras_model)],
                        class_weight="balanced", **TINY_SETTINGS)
    with pytest.raises(ValueError, match="must be a .keras model file"):
        pneumocnn.train(tiny_data, tmp_path / "run2", teachers=[str(tiny_run.tflite_models["int8"])],
                        **TINY_SETTINGS)


def test_a_resumed_run_refuses_a_teacher_that_changed(tmp_path):
    from pneumocnn.training.distillation import record_teachers

    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(b"first weights")
    run = tmp_path / "run"
    run.mkdir()
    started = record_teachers(run, [str(teacher)])
    assert record_teachers(run, [str(teacher)]) == started  # resumed, unchanged
    teacher.write_bytes(b"retrained weights")
    with pytest.raises(DatasetError, match=r"teacher\.keras: this teacher's file changed"):
        record_teachers(run, [str(teacher)])
