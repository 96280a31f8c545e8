"""pneumocnn.runtime.explain on the runtime install: occlusion heat on one absolute scale (no
per-image normalisation), drawn at the X-ray's own aspect ratio inside the part the model saw,
with the answer and a colour bar; real X-rays and the bundled model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import FULL_RESOLUTION, real_images
from PIL import Image

import pneumocnn
from pneumocnn.cli import main
from pneumocnn.core.preprocessing import load_gray
from pneumocnn.runtime.explain import OCCLUSION_SCALE, occlusion, overlay

PNEUMONIA_FULL = FULL_RESOLUTION / "PNEUMONIA" / "person458_bacteria_1953.jpeg"  # 936 x 728


@pytest.fixture(scope="module")
def model() -> pneumocnn.Model:
    return pneumocnn.load(variant="int8")


def colour(picture: Image.Image) -> np.ndarray:
    """How far each pixel is from gray (0 where R == G == B)."""
    rgb = np.asarray(picture, dtype=float)
    return rgb.max(axis=-1) - rgb.min(axis=-1)


def test_every_heatmap_is_drawn_on_one_absolute_scale(model):
    """A heatmap ten times weaker is drawn far fainter (scaled to its own maximum it would
    look the same); no heat leaves the X-ray as it is."""
    strong = occlusion(model, PNEUMONIA_FULL)
    assert strong.scale is OCCLUSION_SCALE and strong.label == "PNEUMONIA"
    assert strong.threshold == model.threshold and strong.heatmap.min() >= 0
    weak = dataclasses.replace(strong, heatmap=strong.heatmap / 10)
    none = dataclasses.replace(strong, heatmap=np.zeros_like(strong.heatmap))
    gray = overlay(PNEUMONIA_FULL, none, legend=False)
    assert colour(gray).max() == 0
    strong_colour = colour(overlay(PNEUMONIA_FULL, strong, legend=False)).mean()
    weak_colour = colour(overlay(PNEUMONIA_FULL, weak, legend=False)).mean()
    assert strong_colour > 5 and weak_colour < strong_colour / 5  # equal if normalised
    normal = occlusion(model, real_images("NORMAL", 1, start=2)[0])  # probability 0.0004
    assert normal.label == "NORMAL" and normal.heatmap.max() < strong.heatmap.max()


def test_the_picture_keeps_the_xrays_aspect_ratio_and_heat_stays_in_the_models_view(
        model, tmp_path):
    explanation = occlusion(model, PNEUMONIA_FULL)
    assert overlay(PNEUMONIA_FULL, explanation, legend=False).size == (512, round(728 * 512 / 936))
    # a black band the model's margin crop cuts off gets no heat
    gray = np.asarray(load_gray(PNEUMONIA_FULL))
    padded = np.concatenate([np.zeros((gray.shape[0], 400), np.uint8), gray], axis=1)
    Image.fromarray(padded).save(tmp_path / "padded.png")
    picture = overlay(tmp_path / "padded.png", occlusion(model, tmp_path / "padded.png"),
                      legend=False)
    band = round(400 * 512 / padded.shape[1])
    tinted = colour(picture)
    assert tinted[:, : band - 1].max() == 0 and tinted[:, band + 1:].mean() > 5


def test_explain_draws_the_answer_and_the_colour_bar_under_the_xray(tmp_path, capsys):
    out = tmp_path / "explained.png"
    assert main(["explain", str(PNEUMONIA_FULL), "--model", str(pneumocnn.load().path),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PNEUMONIA (probability 0.99" in printed and "threshold 0.772" in printed
    with Image.open(out) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    xray_height = round(728 * 512 / 936)
    panel = rgb[xray_height:]
    assert panel.shape[0] > 60 and (panel == 255).all(axis=-1).mean() > 0.5  # a white panel
    red_text = (panel[..., 0] > 150) & (panel[..., 1] < 60) & (panel[..., 2] < 80)
    assert red_text.sum() > 50  # the PNEUMONIA label line
    # the colour bar: its right end is the scale's strongest colour over mid-gray
    top = np.rint(128 * 0.25 + np.array([255, 245, 170]) * 0.75)
    assert (np.abs(panel.reshape(-1, 3).astype(int) - top) <= 2).all(axis=-1).sum() > 20


def test_squares_are_hidden_under_the_mean_by_default_or_under_a_blurred_copy(model):
    image = real_images("PNEUMONIA", 1)[0]
    mean, blur = occlusion(model, image), occlusion(model, image, fill="blur")
    assert np.array_equal(mean.heatmap, occlusion(model, image, fill="mean").heatmap)
    assert mean.heatmap.shape == blur.heatmap.shape and not np.array_equal(mean.heatmap, blur.heatmap)
    with pytest.raises(ValueError, match="fill must be 'mean' or 'blur'"):
        occlusion(model, image, fill="noise")
