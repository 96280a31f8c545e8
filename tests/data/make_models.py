"""Make the tiny models shipped in tests/data for the runtime's tests.

Trains the tiny recipe (the default recipe at 64 px for 2 epochs: ``TINY_SETTINGS`` in
tests/helpers.py) on ``tests/data/xrays`` and copies two of its model files here:

- ``tiny-int8.tflite``: int8;
- ``tiny-dynamic-int8.tflite``: dynamic-range int8 weights with float32 input and output, the
  smallest file of the run that takes the runtime's float path (the float32 file is ~1 MB).

The shipped files were made by this script at commit fc2206e, before int8 exports kept a float
head and every export took one input channel: they are full-integer int8 (int8 input and
output) and three-channel, the kind pneumocnn 0.1.0 and other tools write, which the runtime
still reads, and the tests keep them so. The script makes today's kind.

Needs TensorFlow (``pip install -e '.[dev]'``); from the repository root::

    python tests/data/make_models.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for the helpers' settings

from helpers import TINY_SETTINGS, XRAYS  # noqa: E402

import pneumocnn  # noqa: E402

SHIPPED = {"int8": "tiny-int8.tflite", "dynamic-int8": "tiny-dynamic-int8.tflite"}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = pneumocnn.train(XRAYS, Path(folder) / "tiny", **TINY_SETTINGS)
        for quantization, name in SHIPPED.items():
            shutil.copyfile(run.tflite_models[quantization], HERE / name)
            model = pneumocnn.load(HERE / name)
            print(f"{name}: {(HERE / name).stat().st_size:,} bytes, threshold "
                  f"{model.threshold:.3f}, input {model.description.preprocessing.input_shape}")


if __name__ == "__main__":
    main()
