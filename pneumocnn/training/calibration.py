"""Before export: batch-norm statistics re-estimated on clean images, then the model's
description: probability calibration and threshold chosen on validation, provenance, metrics."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import keras
import numpy as np
import tensorflow as tf

from pneumocnn._version import __version__
from pneumocnn.core.metrics import binary_metrics, fit_calibration, threshold_for_sensitivity
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.core.preprocessing import Preprocessing, to_model_inputs
from pneumocnn.training.settings import TrainingConfig


def recalibrate_batchnorm(model: keras.Model, pixels: np.ndarray, spec: Preprocessing,
                          batch_size: int, random_seed: int) -> None:
    """Replace each batch-norm layer's moving mean and variance by their averages over one pass
    of the training images without augmentation. Training leaves statistics of augmented
    batches, weighted towards the last steps, which shift the logits of clean images."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    momentum = [layer.momentum for layer in layers]
    order = np.random.default_rng(random_seed).permutation(len(pixels))
    for k, start in enumerate(range(0, len(order), batch_size)):
        for layer in layers:
            layer.momentum = k / (k + 1)  # moving value = the mean over the batches so far
        model(to_model_inputs(pixels[order[start:start + batch_size]], spec), training=True)
    for layer, value in zip(layers, momentum, strict=True):
        layer.momentum = value


@dataclass(frozen=True)
class TrainedRun:
    """What a finished run knows when it describes its model."""

    config: TrainingConfig
    train_labels: np.ndarray  # 0/1 per training image that could be decoded
    validation_labels: np.ndarray  # 0/1 per validation image that could be decoded
    probabilities: np.ndarray  # the exported model's positive-class output on them, uncalibrated
    history: list[dict]  # one row per epoch trained
    exported_epoch: int  # the epoch whose weights are exported (1-based)
    teachers: dict[str, str] = field(default_factory=dict)  # distillation: path -> SHA-256


def describe_model(run: TrainedRun, distribution: dict | None = None) -> tuple[ModelDescription, dict]:
    """The model's description and the run's validation metrics (``distribution``: where it
    trained, recorded in the provenance): with ``config.calibrate``,
    temperature and bias fitted on validation (Platt scaling of the logit); the threshold fixed
    or, for ``threshold="sensitivity"``, the highest whose validation sensitivity reaches
    ``target_sensitivity``."""
    config, labels, raw = run.config, run.validation_labels, run.probabilities
    temperature, bias = fit_calibration(labels, raw) if config.calibrate else (1.0, 0.0)
    calibrated = ModelDescription(temperature=temperature, bias=bias).calibrate(raw)
    sensitivity_threshold = threshold_for_sensitivity(labels, calibrated, config.target_sensitivity)
    if config.threshold == "sensitivity":
        threshold, source = sensitivity_threshold, (
            f"validation sensitivity >= {config.target_sensitivity}")
    else:
        threshold, source = float(config.threshold), "fixed"
    metrics = {
        "validation": binary_metrics(labels, calibrated, threshold),
        "validation_at_sensitivity_threshold": binary_metrics(
            labels, calibrated, sensitivity_threshold),
        "validation_uncalibrated_ece": binary_metrics(labels, raw, threshold)["ece"],
    }
    description = ModelDescription(
        preprocessing=config.preprocessing(),
        threshold=threshold,
        temperature=temperature,
        bias=bias,
        info={
            "architecture": config.architecture,
            "threshold_source": source,
            "thresholds": {"fixed_0.5": 0.5,
                           f"sensitivity_{config.target_sensitivity}": sensitivity_threshold},
            "provenance": _provenance(run, distribution),
            "validation_metrics": metrics["validation"],
        },
    )
    return description, metrics


def _provenance(run: TrainedRun, distribution: dict | None) -> dict:
    return {
        **({"distribution": distribution} if distribution else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_images": run.train_labels.size,
        "train_counts": np.bincount(run.train_labels, minlength=2).tolist(),
        "validation_images": run.validation_labels.size,
        "validation_counts": np.bincount(run.validation_labels, minlength=2).tolist(),
        "epochs": len(run.history),
        "exported_epoch": run.exported_epoch,
        **({"teachers": run.teachers} if run.teachers else {}),
        "config": asdict(run.config),
        "versions": {"pneumocnn": __version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
