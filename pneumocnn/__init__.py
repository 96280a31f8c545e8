"""pneumocnn: pneumonia triage on chest X-rays with small, self-describing TFLite models.

Inference (``load``, ``predict``, ``evaluate`` on ``.tflite`` files) needs only numpy, Pillow
and LiteRT; ``train`` and ``convert`` need TensorFlow (``pip install 'pneumocnn[train]'``) and
import it only when called.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pneumocnn.errors import (
    DatasetError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    PneumocnnError,
)
from pneumocnn.evaluation import evaluate
from pneumocnn.model import Model, Prediction, load, predict


def train(data, out="runs/pneumocnn", **settings):
    """Train a model on a labelled X-ray folder; see :func:`pneumocnn.training.trainer.train`."""
    from pneumocnn.training.trainer import train as _train

    return _train(data, out, **settings)


def convert(source, out, **options):
    """Convert a Keras model, SavedModel or seed weights file to a self-describing ``.tflite``;
    see :func:`pneumocnn.training.convert.convert`."""
    from pneumocnn.training.convert import convert as _convert

    return _convert(source, out, **options)


__all__ = [
    "DatasetError",
    "InputError",
    "MissingDependencyError",
    "Model",
    "ModelFileError",
    "PneumocnnError",
    "Prediction",
    "__version__",
    "convert",
    "evaluate",
    "load",
    "predict",
    "train",
]
