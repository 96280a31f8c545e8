"""pneumocnn.training.settings (TensorFlow-free): a run's saved settings keep their meaning
across versions."""

from __future__ import annotations

import json

import pytest

from pneumocnn.training.settings import TrainingConfig


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


def test_split_seed_fixes_the_validation_images_while_the_random_seed_varies():
    from helpers import XRAYS

    from pneumocnn.training.settings import make_config
    from pneumocnn.training.splits import split

    def validation(**settings) -> list:
        return sorted(split(XRAYS, make_config(validation_fraction=0.25, **settings))[1].paths)

    assert validation(random_seed=1, split_seed=0) == validation(random_seed=0)
    assert validation(random_seed=1) != validation(random_seed=0)
    assert make_config(random_seed=4).patient_split_seed == 4


def test_teachers_are_kept_as_a_tuple_through_config_json(tmp_path):
    from dataclasses import asdict

    from pneumocnn.training.settings import make_config, saved_config

    config = make_config(teachers=["a.keras", tmp_path / "b.keras"])
    (tmp_path / "config.json").write_text(json.dumps(asdict(config)))
    assert saved_config(tmp_path) == config
    assert config.teachers == ("a.keras", str(tmp_path / "b.keras"))


def test_earliest_validation_is_the_same_for_every_seed_and_refuses_unknown_modes():
    from helpers import XRAYS

    from pneumocnn.core.labelled_data import index_folder, split_earliest_patients
    from pneumocnn.training.settings import make_config
    from pneumocnn.training.splits import split

    def validation(**settings) -> list:
        return sorted(split(XRAYS, make_config(validation_fraction=0.25, **settings))[1].paths)

    earliest = validation(validation="earliest", random_seed=0)
    assert earliest == validation(validation="earliest", random_seed=3)
    assert earliest == sorted(split_earliest_patients(index_folder(XRAYS), 0.25)[1].paths)
    assert earliest != validation(random_seed=0)
    with pytest.raises(ValueError, match="earliest"):
        validation(validation="latest")


def test_a_fold_with_another_validation_mode_is_refused():
    from pneumocnn.training.settings import make_config

    make_config(fold=1).check()
    with pytest.raises(ValueError, match="fold takes validation='patients'"):
        make_config(fold=1, validation="earliest").check()


def test_an_unknown_architecture_is_refused_before_a_run():
    from pneumocnn.training.settings import make_config

    for name in ("small-bn", "small-sep", "small-sep-wide"):
        make_config(architecture=name).check()
    with pytest.raises(ValueError, match="architecture must be one of"):
        make_config(architecture="resnet50").check()
