"""Explanations: which regions of an X-ray drove the pneumonia probability.

``occlusion`` works on any model, on the runtime install: it hides one square of the model's
pixels at a time (filled with their mean) and records how much the log-odds of pneumonia drop.
``grad_cam`` needs a backend with the Grad-CAM capability: a ``.keras`` model, and TensorFlow.
Both return an :class:`Explanation` whose heatmap is in model-input coordinates; ``overlay``
draws it on the X-ray as an RGB image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.durable_files import atomic_write
from pneumocnn.core.metrics import logit
from pneumocnn.core.preprocessing import ImageInput, Preprocessing, load_pixels, source_name
from pneumocnn.runtime.backends import GRAD_CAM_NEEDS, ClassActivationBackend
from pneumocnn.runtime.model import Model


@dataclass(frozen=True)
class Explanation:
    """``heatmap`` is float ``(H, W)`` at the model input size; for occlusion it is the drop in
    the log-odds of the positive class when that region is hidden (0 where hiding changes
    nothing; an int8 model saturated at probability 0 or 1 shows little)."""

    source: str
    probability: float
    heatmap: np.ndarray
    method: str


def occlusion(model: Model, source: ImageInput, patch: int | None = None,
              stride: int | None = None, *, pixels: np.ndarray | None = None,
              guard: bool = True) -> Explanation:
    """Occlusion sensitivity of ``model`` on one input; ``patch`` and ``stride`` in model-input
    pixels (default: an eighth of the input side, and half of that). A caller that holds the
    input's ``pixels`` as :func:`~pneumocnn.core.preprocessing.load_pixels` made them for this
    model passes them, and ``source`` only names the input. ``guard=False`` explains a DICOM
    file whose tags say it is not a frontal chest X-ray (refused by default)."""
    name = source_name(source)
    if pixels is None:
        pixels = load_pixels(source, model.description.preprocessing, name, guard=guard)
    height, width = pixels.shape
    patch = patch or max(4, min(height, width) // 8)
    stride = stride or max(1, patch // 2)
    baseline = float(model.probabilities(pixels[np.newaxis])[0])
    fill = np.uint8(np.rint(pixels.mean()))
    rows = range(0, max(height - patch, 0) + 1, stride)
    columns = range(0, max(width - patch, 0) + 1, stride)
    boxes = [(r, c) for r in rows for c in columns]
    occluded = np.repeat(pixels[np.newaxis], len(boxes), axis=0)
    for k, (r, c) in enumerate(boxes):
        occluded[k, r : r + patch, c : c + patch] = fill
    drops = np.maximum(logit(baseline) - logit(model.probabilities(occluded)), 0.0)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for drop, (r, c) in zip(drops, boxes, strict=True):
        total[r : r + patch, c : c + patch] += drop
        count[r : r + patch, c : c + patch] += 1
    heatmap = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return Explanation(name, baseline, heatmap.astype(np.float32), "occlusion")


def grad_cam(model: Model, source: ImageInput, *, guard: bool = True) -> Explanation:
    """Grad-CAM on the last convolution of a model whose backend can compute it (a ``.keras``
    Sequential model, as pneumocnn trains; needs TensorFlow); ``guard`` as for
    :func:`occlusion`."""
    backend = model.backend
    if not isinstance(backend, ClassActivationBackend):
        raise ValueError(f"{model.path}: {GRAD_CAM_NEEDS}")
    name = source_name(source)
    spec = model.description.preprocessing
    cam, raw = backend.class_activation(load_pixels(source, spec, name, guard=guard))
    heatmap = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(
        (spec.width, spec.height), Image.Resampling.BILINEAR))
    probability = float(model.description.calibrate(np.array([raw]))[0])
    return Explanation(name, probability, heatmap, "grad-cam")


def overlay(source: ImageInput, explanation: Explanation, size: int = 384) -> Image.Image:
    """The X-ray as the model sees it (square, ``size`` pixels) with the heatmap drawn over it
    in a black-red-yellow scale, transparent where the heatmap is zero."""
    view = Preprocessing(height=size, width=size, channels=1)
    gray = load_pixels(source, view, explanation.source, guard=False).astype(np.float64)
    heat = np.asarray(Image.fromarray(explanation.heatmap.astype(np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR), dtype=np.float64)
    peak = heat.max()
    level = heat / peak if peak > 0 else np.zeros_like(heat)
    colour = np.stack([np.clip(3 * level, 0, 1), np.clip(3 * level - 1, 0, 1),
                       np.clip(3 * level - 2, 0, 1)], axis=-1) * 255
    alpha = (0.6 * level)[..., np.newaxis]
    blended = gray[..., np.newaxis] * (1 - alpha) + colour * alpha
    return Image.fromarray(np.rint(blended).astype(np.uint8))


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write ``image`` as a PNG atomically."""
    with atomic_write(path) as stream:
        image.save(stream, format="PNG")
