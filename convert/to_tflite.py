"""Convert a model made elsewhere to a self-describing .tflite file.

    python convert/to_tflite.py first_try.h5 --out model.tflite  # float16: no data needed
    python convert/to_tflite.py first_try.h5 --out model-int8.tflite --data path/to/xrays
    python convert/to_tflite.py model.keras --out model-f32.tflite --quantization float32
    python convert/to_tflite.py old.tflite --out old.tflite  # re-stamp: add the SHA-256 digest

The same as ``pneumocnn convert``; the logic lives in :func:`pneumocnn.convert`.
"""

import sys

from pneumocnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
