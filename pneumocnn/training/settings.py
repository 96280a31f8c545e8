"""The settings of a training run: ``TrainingConfig``, the named recipes, and settings saved by
earlier runs. TensorFlow-free, so that the command line can build its parser from them."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pneumocnn.core.preprocessing import Preprocessing
from pneumocnn.training.augmentations import AUGMENTATIONS

__all__ = ["ARCHITECTURES_ABOUT", "ARCHITECTURE_NAMES", "AUGMENTATIONS", "RECIPES", "RECIPES_ABOUT",
           "RENAMED_SETTINGS", "STRATEGIES_ABOUT", "TrainingConfig", "config_from_dict", "make_config",
           "saved_config"]


# The models of pneumocnn.training.architectures, named and described here so that settings are
# checked, and the command line lists them, without TensorFlow.
ARCHITECTURES_ABOUT = {
    "seed-to-be": "the seed report's final CNN",
    "seed-as-is": "the seed report's starting CNN",
    "small-bn": "five conv + batch-norm blocks, the bundled model's",
    "small-sep": "depthwise-separable blocks, about half small-bn's latency",
    "small-sep-wide": "the same at twice the width",
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURES_ABOUT)
# Where a run trains (pneumocnn.training.multi_worker); not a setting of the run.
STRATEGIES_ABOUT = {
    "auto": "across the workers TF_CONFIG names (every worker runs this command; the chief "
            "writes --out), or the GPUs of this machine",
    "mirrored": "the GPUs of this machine",
    "none": "one process",
}


class CompileDefaults(Protocol):
    """How an architecture compiles by default (see ``pneumocnn.training.architectures``)."""

    @property
    def outputs(self) -> int: ...
    @property
    def loss(self) -> str: ...
    @property
    def optimizer(self) -> str: ...


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a run; saved as ``config.json`` and reused by ``resume``. The defaults
    are the bundled model's recipe, chosen by the accuracy study (``studies/study.py``)."""

    architecture: str = "small-bn"
    output: str | None = None  # "sigmoid" or "softmax"; None: the architecture's own
    loss: str | None = None  # "binary_crossentropy", "categorical_crossentropy"; None: as above
    optimizer: str | None = None  # a Keras optimizer name ("adam", "rmsprop"); None: as above
    epochs: int = 15
    batch_size: int = 16
    learning_rate: float | None = None
    schedule: str = "cosine"  # learning rate: "constant", or "cosine" decay to 0 over the run
    # export an exponential moving average of the weights over the training steps, with this
    # momentum (e.g. 0.999), instead of the last weights; None: the last weights
    ema_momentum: float | None = None
    input_size: int = 150
    channels: int = 3
    normalize: str = "equalize"  # intensity normalisation, see pneumocnn.core.preprocessing.Preprocessing
    crop: str = "none"  # "margins": cut dark or bright edge bands first (same module)
    augment: bool = True
    augmentation: str = "shift-zoom"  # a name in pneumocnn.training.augmentations.AUGMENTATIONS
    class_weight: str | None = None  # None or "balanced"
    # "patients": split train by patient at random; "earliest": the lowest-numbered patients
    # (acquisition order, see pneumocnn.core.labelled_data.split_earliest_patients); "folder": ROOT/val
    validation: str = "patients"
    validation_fraction: float = 0.1
    fold: int | None = None  # with validation="patients": validate on this patient fold ...
    folds: int = 5  # ... of this many (see pneumocnn.core.labelled_data.patient_folds)
    early_stopping: int | None = None  # patience in epochs on validation loss
    keep_best: bool = False  # export the epoch of lowest validation loss, not the last one
    # re-estimate batch-norm statistics on un-augmented training images before export
    recalibrate_batchnorm: bool = True
    # the random seed of the split, initial weights, shuffling, augmentation and dropout
    # (called "seed" before pneumocnn 0.2; "seed" alone names the seed report's recipe)
    random_seed: int = 0
    split_seed: int | None = None  # the seed of the patient split and folds; None: random_seed
    # model files (.keras) whose mean probability on each augmented training image is the
    # target, instead of the label: knowledge distillation (see pneumocnn.training.distillation)
    teachers: tuple[str, ...] = ()
    threshold: float | str = "sensitivity"  # a probability, or "sensitivity" for the target below
    target_sensitivity: float = 0.97
    calibrate: bool = True
    representative_images: int = 300

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(str(path) for path in self.teachers))

    @property
    def soft_targets(self) -> bool:
        """Whether the run trains on probabilities instead of labels: teachers' (distillation)
        or labels blended by mixup."""
        return bool(self.teachers) or (self.augment and AUGMENTATIONS[self.augmentation].mixup > 0)

    @property
    def patient_split_seed(self) -> int:
        """The random seed of the patient split and folds."""
        return self.random_seed if self.split_seed is None else self.split_seed

    def check(self) -> None:
        """Raise ``ValueError`` naming a setting that no run can use (before a run writes
        anything)."""
        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(f"architecture must be one of {list(ARCHITECTURE_NAMES)}, "
                             f"got {self.architecture!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {sorted(AUGMENTATIONS)}, "
                             f"got {self.augmentation!r}")
        if self.class_weight is not None and self.soft_targets:
            source = ("distillation (teachers)" if self.teachers
                      else f"augmentation {self.augmentation!r}")
            raise ValueError(f"{source} takes no class_weight: the targets are probabilities, "
                             "not classes to weight")
        if self.ema_momentum is not None:
            if not 0 < self.ema_momentum < 1:
                raise ValueError(f"ema_momentum must lie between 0 and 1, got {self.ema_momentum}")
            if self.keep_best:
                raise ValueError("keep_best chooses an epoch by the validation loss of its "
                                 "training weights, ema_momentum exports their average: "
                                 "use one of them")
        if self.fold is not None and self.validation != "patients":
            raise ValueError(f"fold takes validation='patients', got {self.validation!r}")
        self._outputs(1)
        self.decay_steps(0)

    def preprocessing(self) -> Preprocessing:
        """The preprocessing every model file of this run declares."""
        return Preprocessing(height=self.input_size, width=self.input_size, channels=self.channels,
                             normalize=self.normalize, crop=self.crop)

    def compile_settings(self, architecture: CompileDefaults) -> tuple[int, str, str]:
        """``(outputs, loss, optimizer)``: the architecture's own unless overridden here."""
        return (self._outputs(architecture.outputs), self.loss or architecture.loss,
                self.optimizer or architecture.optimizer)

    def _outputs(self, default: int) -> int:
        outputs = {None: default, "sigmoid": 1, "softmax": 2}.get(self.output)
        if outputs is None:
            raise ValueError(f"output must be 'sigmoid' or 'softmax', got {self.output!r}")
        return outputs

    def decay_steps(self, train_images: int) -> int | None:
        """Optimizer steps in the whole run over ``train_images`` images, for a cosine
        schedule; ``None`` for a constant learning rate."""
        if self.schedule == "constant":
            return None
        if self.schedule != "cosine":
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        return self.epochs * -(-train_images // self.batch_size)


# The seed report's recipes, reproduced (see README, "Training"): every setting they fix.
_SEED_RECIPE = {
    "architecture": "seed-to-be", "output": None, "loss": None, "optimizer": None,
    "epochs": 50, "batch_size": 16, "learning_rate": None, "schedule": "constant",
    "input_size": 150, "channels": 3,
    "normalize": "none", "crop": "none", "augment": True, "augmentation": "seed", "class_weight": None,
    "early_stopping": None, "keep_best": False, "recalibrate_batchnorm": False,
    "threshold": 0.5, "target_sensitivity": 0.95,
}
RECIPES: dict[str, dict[str, Any]] = {
    "pneumocnn": {},  # TrainingConfig's defaults: the bundled model's recipe
    "seed": _SEED_RECIPE,
    "seed-as-is": {**_SEED_RECIPE, "architecture": "seed-as-is"},
}
RECIPES_ABOUT = {
    "pneumocnn": "the bundled model's",
    "seed": "the seed report's TO-BE CNN",
    "seed-as-is": "the seed report's AS-IS CNN",
}
# Settings renamed since a release: old name -> new name. Run folders and model files keep
# the names they were written with; ``config_from_dict`` reads both.
RENAMED_SETTINGS = {"seed": "random_seed"}


def make_config(recipe: str = "pneumocnn", **settings: Any) -> TrainingConfig:
    """The settings of a run: the named recipe (see ``RECIPES``), then ``settings`` over it.
    A setting under its old name (``seed=``) still works, with a ``DeprecationWarning``."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    for old, new in RENAMED_SETTINGS.items():
        if old in settings:
            warnings.warn(f"the setting {old!r} is now called {new!r}", DeprecationWarning,
                          stacklevel=2)
    return TrainingConfig(**{**RECIPES[recipe], **_current_names(settings)})


def config_from_dict(saved: Mapping[str, Any]) -> TrainingConfig:
    """The settings of a run as any pneumocnn version saved them (``config.json``, or the
    ``provenance["config"]`` of a model description): renamed settings are read under their
    old names too, and settings added after the run was made take the seed recipe's value,
    which is how such runs were trained."""
    return TrainingConfig(**{**RECIPES["seed"], **_current_names(saved)})


def saved_config(run_dir: str | os.PathLike) -> TrainingConfig:
    """The settings saved in a run folder's ``config.json`` (see ``config_from_dict``)."""
    return config_from_dict(json.loads((Path(run_dir) / "config.json").read_text()))


def _current_names(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {RENAMED_SETTINGS.get(name, name): value for name, value in settings.items()}
