"""Explanations: which regions of an X-ray drove the pneumonia probability.

``occlusion`` works on any model, on the runtime install: it hides one square of the model's
pixels at a time (under their mean by default; or under a blurred copy of the image, which
keeps the square's brightness and hides its detail) and records how much the **log-odds** of
pneumonia (natural logarithm of the odds, ``log(p / (1 - p))``) drop. A drop of ``d`` means
hiding the region divides the odds of pneumonia by ``e**d``: 0.69 halves them, 2.30 divides
them by 10. The scale is absolute, the same for every X-ray and every report
(:data:`OCCLUSION_SCALE`, saturating at odds divided by 20): a region that did not drive the
score stays clear, whatever the rest of the image does.
``grad_cam`` needs a backend with the Grad-CAM capability: a ``.keras`` model, and TensorFlow;
its values have no unit, so its picture is scaled to its own maximum and says so.

Both return an :class:`Explanation` whose heatmap is in model-input coordinates; ``overlay``
draws it on the X-ray at the X-ray's own aspect ratio (the model's square view stretched back
over the part of the image the model saw), with the label, probability, threshold and a colour
bar in the heatmap's units. Pillow only (no matplotlib), so it runs on the runtime install.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pneumocnn.core.durable_files import atomic_write
from pneumocnn.core.metrics import logit
from pneumocnn.core.preprocessing import (
    ImageInput,
    Preprocessing,
    load_gray,
    load_pixels,
    margin_box,
    source_name,
)
from pneumocnn.runtime.backends import GRAD_CAM_NEEDS, ClassActivationBackend
from pneumocnn.runtime.model import Model


@dataclass(frozen=True)
class HeatScale:
    """How heatmap values map to colour: 0 is clear, ``top`` and above the strongest colour.
    ``ticks`` are ``(value, text)`` marks of the colour bar; ``title`` says what a value means."""

    top: float
    ticks: tuple[tuple[float, str], ...]
    title: str


# Occlusion's absolute scale: the colour saturates where hiding a region divides the odds of
# pneumonia by 20 (a log-odds drop of 3.0; the bundled model's strongest region on each
# PNEUMONIA X-ray of tests/data drops it by 1.7 to 3.2, median 2.4).
OCCLUSION_SCALE = HeatScale(
    top=math.log(20),
    ticks=tuple((math.log(k), str(k)) for k in (1, 2, 5, 10, 20)),
    title="hiding the region divides the odds of pneumonia by (log-odds drop 0 to 3.0)",
)
# The colours of the scale, from clear to strongest: dark red, red, orange, pale yellow.
_COLOURS = np.array([[110, 0, 0], [220, 30, 0], [255, 150, 0], [255, 245, 170]], dtype=np.float64)
_OPACITY = 0.75  # of the strongest colour over the X-ray


@dataclass(frozen=True)
class Explanation:
    """What drove one answer. ``heatmap`` is float ``(H, W)`` at the model input size, in the
    units of ``scale``: for occlusion the drop in the log-odds of the positive class when that
    region is hidden (0 where hiding it changes nothing or raises the score; an int8 model
    saturated at probability 0 or 1 shows little). ``label`` and ``threshold`` are the answer's;
    ``preprocessing`` is the model's (where its view lies in the X-ray)."""

    source: str
    probability: float
    heatmap: np.ndarray
    method: str
    label: str
    threshold: float
    preprocessing: Preprocessing
    scale: HeatScale


def occlusion(model: Model, source: ImageInput, patch: int | None = None,
              stride: int | None = None, *, pixels: np.ndarray | None = None,
              guard: bool = True, fill: str = "mean") -> Explanation:
    """Occlusion sensitivity of ``model`` on one input; ``patch`` and ``stride`` in model-input
    pixels (default: an eighth of the input side, and half of that). A caller that holds the
    input's ``pixels`` as :func:`~pneumocnn.core.preprocessing.load_pixels` made them for this
    model passes them, and ``source`` only names the input. ``guard=False`` explains a DICOM
    file whose tags say it is not a frontal chest X-ray (refused by default). ``fill`` hides a
    patch under the image's mean (``"mean"``, the default: takes away the patch's brightness
    and its detail) or under a copy of the image blurred over the patch's size (``"blur"``:
    takes away the detail only, so evidence that is brightness over a region larger than the
    patch, such as a consolidation, goes unseen). Where the two put the bundled model's
    evidence: ``studies/results/evidence``."""
    name = source_name(source)
    spec = model.description.preprocessing
    if pixels is None:
        pixels = load_pixels(source, spec, name, guard=guard)
    height, width = pixels.shape
    patch = patch or max(4, min(height, width) // 8)
    stride = stride or max(1, patch // 2)
    baseline = float(model.probabilities(pixels[np.newaxis])[0])
    if fill == "mean":
        hidden = np.full_like(pixels, np.rint(pixels.mean()))
    elif fill == "blur":
        hidden = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(patch / 2)))
    else:
        raise ValueError(f"fill must be 'mean' or 'blur', got {fill!r}")
    rows = range(0, max(height - patch, 0) + 1, stride)
    columns = range(0, max(width - patch, 0) + 1, stride)
    boxes = [(r, c) for r in rows for c in columns]
    occluded = np.repeat(pixels[np.newaxis], len(boxes), axis=0)
    for k, (r, c) in enumerate(boxes):
        occluded[k, r : r + patch, c : c + patch] = hidden[r : r + patch, c : c + patch]
    drops = np.maximum(logit(baseline) - logit(model.probabilities(occluded)), 0.0)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for drop, (r, c) in zip(drops, boxes, strict=True):
        total[r : r + patch, c : c + patch] += drop
        count[r : r + patch, c : c + patch] += 1
    heatmap = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return Explanation(name, baseline, heatmap.astype(np.float32), "occlusion",
                       _label(model, baseline), model.threshold, spec, OCCLUSION_SCALE)


def grad_cam(model: Model, source: ImageInput, *, guard: bool = True) -> Explanation:
    """Grad-CAM on the last convolution of a model whose backend can compute it (a ``.keras``
    Sequential model, as pneumocnn trains; needs TensorFlow); ``guard`` as for
    :func:`occlusion`. Its values have no unit: its scale runs to its own maximum."""
    backend = model.backend
    if not isinstance(backend, ClassActivationBackend):
        raise ValueError(f"{model.path}: {GRAD_CAM_NEEDS}")
    name = source_name(source)
    spec = model.description.preprocessing
    cam, raw = backend.class_activation(load_pixels(source, spec, name, guard=guard))
    heatmap = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(
        (spec.width, spec.height), Image.Resampling.BILINEAR))
    probability = float(model.description.calibrate(np.array([raw]))[0])
    peak = float(heatmap.max())
    scale = HeatScale(top=peak if peak > 0 else 1.0, ticks=((0.0, "0"), (peak, "max")),
                      title="Grad-CAM, relative to this X-ray's maximum (no unit)")
    return Explanation(name, probability, heatmap, "grad-cam", _label(model, probability),
                       model.threshold, spec, scale)


def _label(model: Model, probability: float) -> str:
    return model.labels[1] if probability >= model.threshold else model.labels[0]


def overlay(source: ImageInput, explanation: Explanation, size: int = 512, *,
            legend: bool = True) -> Image.Image:
    """The X-ray ``source`` (a path, or the image already decoded) at its own aspect ratio,
    its longer side ``size`` pixels, with the heatmap over the part the model saw (inside the
    margins it cuts); with ``legend``, a panel below with the label, probability and threshold
    and the colour bar of the heatmap's scale. RGB."""
    gray = load_gray(source, explanation.source)
    box = margin_box(gray) if explanation.preprocessing.crop == "margins" else (0, 0, *gray.size)
    factor = size / max(gray.size)
    shown = (max(1, round(gray.width * factor)), max(1, round(gray.height * factor)))
    view = np.asarray(gray.resize(shown, Image.Resampling.BILINEAR, reducing_gap=3.0),
                      dtype=np.float64)
    left, top = round(box[0] * factor), round(box[1] * factor)
    right, bottom = max(left + 1, round(box[2] * factor)), max(top + 1, round(box[3] * factor))
    heat = np.zeros(view.shape)
    heat[top:bottom, left:right] = np.asarray(
        Image.fromarray(explanation.heatmap.astype(np.float32)).resize(
            (right - left, bottom - top), Image.Resampling.BILINEAR))
    picture = Image.fromarray(blend(view, heat, explanation.scale))
    if not legend:
        return picture
    panel = legend_panel(explanation, picture.width)
    whole = Image.new("RGB", (picture.width, picture.height + panel.height), "white")
    whole.paste(picture, (0, 0))
    whole.paste(panel, (0, picture.height))
    return whole


def blend(gray: np.ndarray, heat: np.ndarray, scale: HeatScale) -> np.ndarray:
    """The heatmap values ``heat`` coloured by ``scale`` over the grayscale image ``gray`` (float
    arrays of one shape): uint8 RGB."""
    colour, alpha = _colour(heat, scale)
    blended = gray[..., np.newaxis] * (1 - alpha[..., np.newaxis]) + colour * alpha[..., np.newaxis]
    return np.rint(blended).astype(np.uint8)


def _colour(values: np.ndarray, scale: HeatScale) -> tuple[np.ndarray, np.ndarray]:
    """The colour (float RGB) and opacity (0 to ``_OPACITY``) of each heatmap value."""
    level = np.clip(values / scale.top, 0.0, 1.0)
    position = level * (len(_COLOURS) - 1)
    low = np.minimum(position.astype(int), len(_COLOURS) - 2)
    fraction = (position - low)[..., np.newaxis]
    colour = _COLOURS[low] * (1 - fraction) + _COLOURS[low + 1] * fraction
    return colour, _OPACITY * level


def colour_bar(scale: HeatScale, width: int, height: int = 14) -> Image.Image:
    """The colour bar of ``scale`` as the heatmap draws it over a mid-gray X-ray region, from
    0 (left) to ``scale.top`` (right): RGB ``width`` x ``height``, no text."""
    values = np.broadcast_to(np.linspace(0.0, scale.top, width), (height, width))
    return Image.fromarray(blend(np.full((height, width), 128.0), values, scale))


def legend_panel(explanation: Explanation, width: int) -> Image.Image:
    """A white panel ``width`` pixels wide: the answer (label, probability, threshold) and
    the colour bar of the heatmap's scale with its ticks and title."""
    scale = explanation.scale
    unit = max(9, min(16, width // 32))
    margin = unit
    answer = (f"{explanation.label}: probability {_probability(explanation.probability)}, "
              f"threshold {explanation.threshold:.3f}")
    lines = [(answer, (176, 0, 32) if explanation.probability >= explanation.threshold
              else (34, 34, 34)),
             (f"{explanation.method}: {scale.title}", (68, 68, 68))]
    fonts = [_fitting_font(text, width - 2 * margin, unit + 3 - 2 * k)
             for k, (text, _) in enumerate(lines)]
    bar_top = margin // 2 + 2 * unit
    bar_height = unit
    panel = Image.new("RGB", (width, bar_top + bar_height + 4 * unit), "white")
    draw = ImageDraw.Draw(panel)
    draw.text((margin, margin // 2), lines[0][0], fill=lines[0][1], font=fonts[0])
    bar_width = width - 2 * margin
    panel.paste(colour_bar(scale, bar_width, bar_height), (margin, bar_top))
    small = ImageFont.load_default(size=unit)
    for value, text in scale.ticks:
        x = margin + round(value / scale.top * (bar_width - 1))
        draw.line([(x, bar_top + bar_height), (x, bar_top + bar_height + unit // 3)], fill="black")
        anchor = "lt" if x - margin < unit else "rt" if margin + bar_width - x < unit else "mt"
        draw.text((x, bar_top + bar_height + unit // 2), text, fill="black", font=small,
                  anchor=anchor)
    draw.text((margin, bar_top + bar_height + 2 * unit), lines[1][0], fill=lines[1][1],
              font=fonts[1])
    return panel


def _fitting_font(text: str, width: int, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` pixels, or smaller until ``text`` fits in ``width``."""
    font = ImageFont.load_default(size=size)
    while size > 6 and font.getlength(text) > width:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def _probability(probability: float) -> str:
    """Three decimals, or as many as it takes (up to six) to tell it from 0 or 1."""
    for digits in range(3, 7):
        text = f"{probability:.{digits}f}"
        if 0 < float(text) < 1 or probability in (0.0, 1.0):
            return text
    return f"{probability:.6f}"


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write ``image`` as a PNG atomically."""
    with atomic_write(path) as stream:
        image.save(stream, format="PNG")
