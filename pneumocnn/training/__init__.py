"""The training wing: ``trainer.train`` and ``convert.convert`` (TensorFlow), with TensorFlow-free
``settings``, ``splits`` and ``augmentations`` for the command line and benchmarks.

Importing this package imports nothing heavy; it only quiets TensorFlow's C++ logging (unless
``TF_CPP_MIN_LOG_LEVEL`` is already set), before any module of the wing imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
