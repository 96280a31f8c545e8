"""pneumocnn: pneumonia triage on chest X-rays with small, self-describing TFLite models.

Inference (``load``, ``predict``, ``evaluate``, and ``calibrate`` to a site's own X-rays, on
``.tflite`` files) needs only numpy, Pillow and LiteRT; ``train`` and ``convert`` need
TensorFlow (``pip install 'pneumocnn[train]'``) and import it only when called.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocnn._version import __version__
from pneumocnn.core.errors import (
    DatasetError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    NotFrontalChestError,
    PneumocnnError,
)
from pneumocnn.runtime.model import Model, Prediction, load, predict

if TYPE_CHECKING:
    from pneumocnn.clinic.site_calibration import SiteCalibration, calibrate
    from pneumocnn.runtime.evaluation import evaluate
    from pneumocnn.training.trainer import TrainingResult

# What predict does not need, imported on first use so that a fresh process scores sooner.
_ON_FIRST_USE = {"SiteCalibration": "pneumocnn.clinic.site_calibration",
                 "calibrate": "pneumocnn.clinic.site_calibration",
                 "evaluate": "pneumocnn.runtime.evaluation"}


def __getattr__(name: str) -> Any:
    """``evaluate``, ``calibrate`` and ``SiteCalibration``, imported when first asked for."""
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'pneumocnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})


def train(
    data: str | os.PathLike, out: str | os.PathLike = "runs/pneumocnn", **settings: Any
) -> TrainingResult:
    """Train a model on a labelled X-ray folder into the run folder ``out`` and return a
    ``TrainingResult``; needs ``pneumocnn[train]``. ``settings`` (``epochs``, ``batch_size``,
    ``resume``, ...) are those of :func:`pneumocnn.training.trainer.train`. Raises
    :class:`MissingDependencyError` without TensorFlow."""
    from pneumocnn.training import require_tensorflow

    require_tensorflow("training")
    from pneumocnn.training.trainer import train as _train

    return _train(data, out, **settings)


def convert(source: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert a ``.keras`` file, SavedModel folder or seed weights file to a self-describing
    ``.tflite`` and return its path; needs ``pneumocnn[train]``. ``options`` are those of
    :func:`pneumocnn.training.convert.convert`. Re-stamping a ``.tflite`` file needs no
    TensorFlow; anything else raises :class:`MissingDependencyError` without it."""
    from pneumocnn.training import require_tensorflow

    if Path(source).suffix != ".tflite":
        require_tensorflow("converting a Keras model or SavedModel")
    from pneumocnn.training.convert import convert as _convert

    return _convert(source, out, **options)


__all__ = [
    "DatasetError",
    "InputError",
    "MissingDependencyError",
    "Model",
    "ModelFileError",
    "NotFrontalChestError",
    "PneumocnnError",
    "Prediction",
    "SiteCalibration",
    "__version__",
    "calibrate",
    "convert",
    "evaluate",
    "load",
    "predict",
    "train",
]
