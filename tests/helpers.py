"""What the tests share besides fixtures: where the real X-rays and tiny models shipped in
``tests/data`` are, the whole data set's place, the tiny training recipe, and functions that pick
X-rays or read a checkpoint. Imported as ``from helpers import ...`` (pytest puts ``tests/`` on
the path); the fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
XRAYS = TEST_DATA / "xrays"  # {NORMAL,PNEUMONIA}/: 24 + 24 of the 224 px training JPEGs
FULL_RESOLUTION = TEST_DATA / "full_resolution"  # 3 original full-size files of the same images
TINY_INT8 = TEST_DATA / "tiny-int8.tflite"  # the tiny recipe below, full-integer int8
TINY_FLOAT = TEST_DATA / "tiny-dynamic-int8.tflite"  # the same run, float32 input and output
TINY_SIZE = 64

# the whole data set, for the few tests marked full_data
FULL_DATA = Path(os.environ.get("PNEUMOCNN_DATA") or REPO.parent / "shared" / "data")
FULL_TRAIN = FULL_DATA / "chest_xray" / "train"

# the tiny recipe: the default recipe at 64 px for 2 epochs (tests/data/make_models.py made the
# shipped tiny models with these settings from tests/data/xrays)
TINY_SETTINGS = dict(
    epochs=2, batch_size=8, input_size=TINY_SIZE, representative_images=16,
    validation_fraction=0.25, verbose=0,
)


def real_images(label: str, count: int, start: int = 0) -> list[Path]:
    """``count`` real 224x224 training X-rays of one class from ``tests/data/xrays``, in a fixed
    order (24 per class: ``start + count`` must not exceed 24)."""
    found = sorted((XRAYS / label).glob("*.jpeg"))[start : start + count]
    if len(found) != count:
        raise ValueError(f"tests/data/xrays/{label} holds no images {start}..{start + count - 1}")
    return found


def trained_and_averaged(checkpoint: Path) -> tuple[list, list]:
    """A training checkpoint's trainable weights, and its optimizer's moving average of them
    (runs with ``ema_momentum``), as numpy arrays."""
    import keras

    model = keras.saving.load_model(checkpoint)
    trained = [variable.numpy() for variable in model.trainable_variables]
    model.optimizer.finalize_variable_values(model.trainable_variables)
    return trained, [variable.numpy() for variable in model.trainable_variables]


def full_resolution_files() -> list[Path]:
    """The shipped full-size originals (their 224 px copies are among ``XRAYS``)."""
    return sorted(FULL_RESOLUTION.glob("*/*.jpeg"))
