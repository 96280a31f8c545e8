"""pneumocnn: pneumonia triage on chest X-rays with small, self-describing TFLite models.

Inference (``load``, ``predict``, ``evaluate``, and ``calibrate`` to a site's own X-rays, on
``.tflite`` files) needs only numpy, Pillow and LiteRT; ``train`` and ``convert`` need
TensorFlow (``pip install 'pneumocnn[train]'``) and import it only when called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocnn._version import __version__
from pneumocnn.clinic.site_calibration import SiteCalibration, calibrate
from pneumocnn.core.errors import (
    DatasetError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    NotFrontalChestError,
    PneumocnnError,
)
from pneumocnn.runtime.evaluation import evaluate
from pneumocnn.runtime.model import Model, Prediction, load, predict

if TYPE_CHECKING:
    from pneumocnn.training.trainer import TrainingResult


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
