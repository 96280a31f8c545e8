"""Which images a run trains and validates on. TensorFlow-free: benchmarks recompute a run's
split from its ``config.json`` with it."""

from __future__ import annotations

import os

import numpy as np

from pneumocnn.core.errors import DatasetError
from pneumocnn.core.labelled_data import (
    LabelledImages,
    find_splits,
    patient_folds,
    split_by_patient,
    split_earliest_patients,
)
from pneumocnn.training.settings import TrainingConfig


def split(root: str | os.PathLike, config: TrainingConfig) -> tuple[LabelledImages, LabelledImages]:
    """The ``(train, validation)`` images a run with ``config`` uses from the folder ``root``."""
    splits = find_splits(root)
    if config.validation == "patients" and config.fold is not None:
        if not 0 <= config.fold < config.folds:
            raise ValueError(f"fold must lie in [0, {config.folds}), got {config.fold}")
        in_fold = patient_folds(splits["train"], config.folds, config.patient_split_seed) == config.fold
        return (splits["train"].subset(np.flatnonzero(~in_fold)),
                splits["train"].subset(np.flatnonzero(in_fold)))
    if config.validation == "patients":
        return split_by_patient(splits["train"], config.validation_fraction,
                                config.patient_split_seed)
    if config.validation == "earliest":
        return split_earliest_patients(splits["train"], config.validation_fraction)
    if config.validation == "folder":
        if "val" not in splits:
            raise DatasetError(f"{root}: no val folder; use validation='patients'")
        return splits["train"], splits["val"]
    raise ValueError(f"validation must be 'patients', 'earliest' or 'folder', "
                     f"got {config.validation!r}")


def describe_split(config: TrainingConfig) -> str:
    """How ``config`` chooses its validation images, in the settings' words (for reports)."""
    if config.validation == "folder":
        return "the data's val folder"
    if config.validation == "earliest":
        return f"earliest patients, fraction {config.validation_fraction}"
    if config.fold is not None:
        return f"patient fold {config.fold} of {config.folds}, random seed {config.patient_split_seed}"
    return f"patients, fraction {config.validation_fraction}, random seed {config.patient_split_seed}"


def summary(images: LabelledImages) -> str:
    """``"N images (n NORMAL, m PNEUMONIA) from P patients"``, for logs and reports."""
    counts = ", ".join(f"{n} {name}" for name, n in images.counts().items())
    return f"{len(images)} images ({counts}) from {len(set(images.patients()))} patients"
