"""What is benchmarked on: the run folder's model files and the labelled images.

The default evaluation set is the patient-level validation split the run held out, recomputed
from its ``config.json`` exactly as training made it; the default training set for the input
pipeline benchmark is the other side of that split. Where that data set is absent (a fresh
clone has no ``../shared``), both fall back to the 24 + 24 X-rays shipped in ``tests/data/xrays``,
and the full-size files to ``tests/data/full_resolution``: the benchmark runs out of the box,
and the report says what it was given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import BUNDLED_RUN, REPO, SHARED_DATA, TEST_DATA, TRAINED_RUN
from pneumocnn.core.labelled_data import LabelledImages, index_folder
from pneumocnn.training.settings import saved_config
from pneumocnn.training.splits import describe_split, split

CHEST_XRAY = SHARED_DATA / "chest_xray"
FULL_RESOLUTION = SHARED_DATA / "full_resolution"
TEST_XRAYS = TEST_DATA / "xrays"
TEST_FULL_RESOLUTION = TEST_DATA / "full_resolution"
TEST_XRAYS_SOURCE = ("the 24 + 24 X-rays shipped in tests/data/xrays (no ../shared/data/chest_xray "
                     "here)")


@dataclass(frozen=True)
class RunSplits:
    """The run's training images and the images it was validated on (never trained on)."""

    train: LabelledImages
    validation: LabelledImages
    source: str  # how the split was obtained, for the report


def default_run() -> Path:
    """``runs/pneumocnn`` when it holds a finished run (``model.keras``), else the bundled
    model's run shipped in ``benchmarks/bundled-run``."""
    return TRAINED_RUN if (TRAINED_RUN / "model.keras").is_file() else BUNDLED_RUN


def default_full_resolution() -> Path:
    """``../shared/data/full_resolution``, else the 3 full-size files in ``tests/data``."""
    return FULL_RESOLUTION if FULL_RESOLUTION.is_dir() else TEST_FULL_RESOLUTION


def have_chest_xray(data: Path = CHEST_XRAY) -> bool:
    """Whether the run's data set is here to recompute its split from."""
    return (data / "train").is_dir()


def run_splits(run_dir: Path, data: Path = CHEST_XRAY) -> RunSplits:
    """Recompute the run's train / validation split of ``data`` from its ``config.json``."""
    config = saved_config(run_dir)
    train, validation = split(data, config)
    shown = os.path.relpath(data, REPO)
    source = f"the validation split of {shown} ({describe_split(config)})"
    return RunSplits(train, validation, source)


def shipped_xrays() -> RunSplits:
    """The shipped X-rays as both sides: the fallback when the run's data set is absent. They
    are training images of the bundled model, so accuracy on them is no claim."""
    images = index_folder(TEST_XRAYS)
    return RunSplits(images, images, TEST_XRAYS_SOURCE)


def folder_images(folder: Path) -> LabelledImages:
    """A labelled folder ``FOLDER/{NORMAL,PNEUMONIA}``."""
    return index_folder(folder)


def subsample(images: LabelledImages, limit: int | None) -> LabelledImages:
    """At most ``limit`` images, evenly spaced over the sorted list (so both classes stay)."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(np.unique(np.linspace(0, len(images) - 1, limit).astype(int)))


def describe_images(images: LabelledImages) -> dict:
    """Counts per class, for the report."""
    return {"n": len(images), **images.counts()}
