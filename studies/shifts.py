"""Score a training run's int8 model on its validation images as they are and under simulated
acquisition shifts, and on the official ``val`` folder.

The hold-out this project is judged on was acquired apart from the training images, and models
selected on splits of train over-call pneumonia there. No image here comes from elsewhere, so
the study imitates what differs between machines and sites — exposure (gamma), contrast,
sharpness, noise, compression, field of view, collimation borders — and measures how far each
model's specificity and ROC AUC fall. The shifts are deterministic, applied to the decoded
grayscale image before the model's own preprocessing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

import pneumocnn
from pneumocnn.core.labelled_data import find_splits
from pneumocnn.core.metrics import binary_metrics
from pneumocnn.core.preprocessing import load_gray
from pneumocnn.training.settings import saved_config
from pneumocnn.training.splits import split


def _gamma(exponent: float) -> Callable[[Image.Image], Image.Image]:
    table = [round(255 * (v / 255) ** exponent) for v in range(256)]
    return lambda image: image.point(table)


def _contrast(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        mean = pixels.mean()
        return Image.fromarray(np.clip(mean + factor * (pixels - mean), 0, 255).astype(np.uint8))
    return apply


def _noise(image: Image.Image) -> Image.Image:
    rng = np.random.default_rng(np.asarray(image).sum() % 2**32)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, image.size[::-1])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=20)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _zoom(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((w // 12, h // 12, w - w // 12, h - h // 12))


def _shrink_and_pad(fraction: float) -> Callable[[Image.Image], Image.Image]:
    """A wider field of view: the image shrunk inside a black band of ``fraction`` of its size
    each side."""
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        dx, dy = round(w * fraction), round(h * fraction)
        return ImageOps.expand(image.resize((w - 2 * dx, h - 2 * dy)), (dx, dy), fill=0)
    return apply


def _collimation(image: Image.Image) -> Image.Image:
    """Tighter collimation: 8 % of the image's width and height blacked out at each edge."""
    w, h = image.size
    dx, dy = round(w * 0.08), round(h * 0.08)
    pixels = np.zeros((h, w), np.uint8)
    pixels[dy:h - dy, dx:w - dx] = np.asarray(image)[dy:h - dy, dx:w - dx]
    return Image.fromarray(pixels)


SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "gamma 0.6 (brighter)": _gamma(0.6),
    "gamma 1.6 (darker)": _gamma(1.6),
    "contrast x0.6": _contrast(0.6),
    "contrast x1.4": _contrast(1.4),
    "blur r=1.5": lambda image: image.filter(ImageFilter.GaussianBlur(1.5)),
    "noise sd=8": _noise,
    "JPEG quality 20": _jpeg,
    "zoom in 1.2x": _zoom,
    "black border 5%": _shrink_and_pad(0.05),
    "zoom out (9% black pad)": _shrink_and_pad(0.09),
    "collimation 8%": _collimation,
}
# The hold-out's pneumonia share (0.625) against the training data's (0.743).
PREVALENCE = 0.625


def prevalence_subset(labels: np.ndarray, share: float = PREVALENCE) -> np.ndarray:
    """Indices of the largest subset of ``labels`` whose share of 1s is ``share``: every image
    of the scarcer side kept, the other side thinned evenly (deterministic)."""
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    keep_positives = min(len(positives), round(len(negatives) * share / (1 - share)))
    keep_negatives = min(len(negatives), round(keep_positives * (1 - share) / share))
    return np.sort(np.concatenate([_evenly(positives, keep_positives),
                                   _evenly(negatives, keep_negatives)]))


def _evenly(indices: np.ndarray, count: int) -> np.ndarray:
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)]


def model_probabilities(model, inputs: list) -> np.ndarray:
    """``model``'s calibrated probabilities for ``inputs``."""
    return np.array([r.probability for r in model.predict(inputs)])


def scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Metrics at ``threshold`` and at 0.5, the mean probability and the pneumonia share."""
    return {"at_model_threshold": binary_metrics(labels, probabilities, threshold),
            "at_0.5": binary_metrics(labels, probabilities, 0.5),
            "mean_probability": float(probabilities.mean()), "share": float(labels.mean())}


def _scores(model, labels: np.ndarray, inputs: list) -> dict:
    return scores(labels, model_probabilities(model, inputs), model.threshold)


def score_model(run: Path, data: Path) -> dict:
    """Scores of ``run``'s int8 model: ``validation``, ``shifts`` (one entry per shift),
    ``prevalence`` (validation thinned to the hold-out's pneumonia share) and ``official_val``
    (``None`` without a ``val`` folder); also the run's Keras figures and
    settings from its own files."""
    config = saved_config(run)
    model = pneumocnn.load(run / "model-int8.tflite")
    images = split(data, config)[1]
    grays = [load_gray(path) for path in images.paths]
    subset = prevalence_subset(images.labels)
    official = find_splits(data).get("val")
    metrics = json.loads((run / "metrics.json").read_text())
    seconds = [float(row["seconds"]) for row in csv.DictReader(io.StringIO(
        (run / "history.csv").read_text()))]
    return {
        "config": asdict(config),
        "threshold": model.threshold,
        "temperature": model.description.temperature,
        "bias": model.description.bias,
        "exported_epoch": model.description.info["provenance"].get("exported_epoch"),
        "epochs_trained": len(seconds),
        "training_seconds": round(sum(seconds)),
        "keras_validation": metrics["validation"],
        "validation": _scores(model, images.labels, grays),
        "shifts": {name: _scores(model, images.labels, [shift(g) for g in grays])
                   for name, shift in SHIFTS.items()},
        "prevalence": _scores(model, images.labels[subset], [grays[i] for i in subset]),
        "official_val": official and _scores(model, official.labels, list(official.paths)),
    }
