"""The training wing: ``trainer.train`` and ``convert.convert`` (TensorFlow), with TensorFlow-free
``settings``, ``splits`` and ``augmentations`` for the command line and benchmarks.

Importing this package imports nothing heavy; it only quiets TensorFlow's C++ logging (unless
``TF_CPP_MIN_LOG_LEVEL`` is already set), before any module of the wing imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def require_tensorflow(what: str) -> None:
    """Raise :class:`~pneumocnn.MissingDependencyError`, naming the extra to install, unless
    Keras and TensorFlow are installed (looked up, not imported); ``what`` needs them."""
    import importlib.util

    from pneumocnn.core.errors import MissingDependencyError

    missing = [name for name in ("tensorflow", "keras") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"{what} needs TensorFlow ({' and '.join(missing)} not "
                                     f"installed): pip install 'pneumocnn[train]'")
