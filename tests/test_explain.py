"""pneumocnn.runtime.explain: occlusion and Grad-CAM heatmaps land on the evidence."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_SETTINGS
from PIL import Image

import pneumocnn
from pneumocnn.runtime.explain import grad_cam, occlusion, overlay


def _patch_dataset(root, count=80, size=64, seed=0):
    """Noise X-ray stand-ins; PNEUMONIA ones carry a bright square somewhere."""
    rng = np.random.default_rng(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(60, 120, (size, size)).astype(np.uint8)
            if label == "PNEUMONIA":
                r, c = rng.integers(4, size - 20, 2)
                image[r : r + 16, c : c + 16] = 240
            Image.fromarray(image).save(root / label / f"{label}-{i}.png")


@pytest.mark.training
def test_heatmaps_land_on_the_evidence(tmp_path):
    _patch_dataset(tmp_path / "data")
    settings = {**TINY_SETTINGS, "epochs": 6, "batch_size": 16, "validation_fraction": 0.2}
    run = pneumocnn.train(tmp_path / "data", tmp_path / "run", **settings)
    model = pneumocnn.load(run.tflite_models["float32"])
    image = np.random.default_rng(1).integers(60, 120, (64, 64)).astype(np.uint8)
    image[36:52, 8:24] = 240
    explanation = occlusion(model, image)
    assert explanation.probability > 0.5
    cam = grad_cam(pneumocnn.load(run.keras_model), image).heatmap
    patch = np.zeros((64, 64), bool)
    patch[36:52, 8:24] = True
    assert explanation.heatmap[patch].mean() > 2 * explanation.heatmap[~patch].mean()
    # Grad-CAM at the last 8 x 8 convolution, behind Flatten + Dense, is coarser
    assert cam[patch].mean() > 1.2 * cam[~patch].mean()
    picture = overlay(image, explanation)
    assert picture.width == 512 and picture.height > 512 and picture.mode == "RGB"  # + legend
