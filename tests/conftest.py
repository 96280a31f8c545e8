"""Shared fixtures: real X-rays from ../shared/data and one tiny model trained on them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TRAIN = DATA / "chest_xray" / "train"
FULL_RESOLUTION = DATA / "full_resolution"
TINY_SIZE = 64


def real_images(label: str, count: int, start: int = 0) -> list[Path]:
    """``count`` real 224x224 training X-rays of one class, in a fixed order."""
    return sorted((TRAIN / label).glob("*.jpeg"))[start : start + count]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """ROOT/{NORMAL,PNEUMONIA} with 24 real X-rays per class."""
    root = tmp_path_factory.mktemp("tiny-data")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir()
        for path in real_images(label, 24, start=100):
            shutil.copy(path, root / label / path.name)
    return root


TINY_SETTINGS = dict(
    epochs=2, batch_size=8, input_size=TINY_SIZE, representative_images=16,
    validation_fraction=0.25, verbose=0,
)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A real training run of the default recipe at 64 px for 2 epochs, with all model files."""
    import pneumocnn

    return pneumocnn.train(tiny_data, tmp_path_factory.mktemp("runs") / "tiny", **TINY_SETTINGS)
