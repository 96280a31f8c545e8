"""Shared fixtures: the real X-rays and tiny models shipped in ``tests/data``, and one tiny model
trained on them for the training tests (the constants and functions tests share are in
``helpers.py``).

Nothing here reads outside the repository, except for tests marked ``full_data``: they need the
whole data set (``../shared/data`` beside the repository, or ``$PNEUMOCNN_DATA``) and are skipped,
saying so, when it is absent, as in a fresh clone.

Markers (registered in pyproject.toml): ``training`` on every test that needs TensorFlow (the
runtime's tests are ``-m "not training"``), ``dask`` on every test that needs
``pneumocnn[dask]`` (skipped, saying so, without it), ``slow``, ``full_data``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from helpers import FULL_DATA, FULL_TRAIN, TINY_INT8, TINY_SETTINGS, XRAYS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# fixtures that train (or exist only to train): a test using one must be marked `training`
TRAINING_FIXTURES = ("tiny_run", "tiny_data")


@pytest.fixture(autouse=True)
def variant_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test remembers variant choices in a folder of its own (outside its ``tmp_path``,
    which tests fill with their data), never in the user's cache."""
    folder = tmp_path_factory.mktemp("variant-cache") / "cache"
    monkeypatch.setenv("PNEUMOCNN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The whole data set; tests using it are marked ``full_data`` (skipped when absent)."""
    return FULL_DATA


@pytest.fixture(scope="session")
def int8_path() -> Path:
    """The shipped tiny int8 model (the runtime's tests run on it, without TensorFlow)."""
    return TINY_INT8


@pytest.fixture(scope="session")
def model(int8_path):
    """The shipped tiny int8 model, loaded (shared by the tests of a session, as by threads)."""
    import pneumocnn

    return pneumocnn.load(int8_path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """ROOT/{NORMAL,PNEUMONIA} with the 24 + 24 shipped X-rays (a copy: tests may not change
    ``tests/data``)."""
    root = tmp_path_factory.mktemp("tiny-data") / "xrays"
    shutil.copytree(XRAYS, root)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A real training run of the default recipe at 64 px for 2 epochs, with all model files."""
    import pneumocnn

    return pneumocnn.train(tiny_data, tmp_path_factory.mktemp("runs") / "tiny", **TINY_SETTINGS)


def pytest_collection_modifyitems(config, items):
    """Keep the markers honest: a test that trains must say so; a test that needs the whole
    data set is skipped, with the reason, where there is none; without TensorFlow, training
    tests are skipped (the runtime's selection is ``-m "not training"``), and without Dask,
    Dask tests."""
    unmarked = [f"{item.nodeid} (uses {fixture}, not marked `{marker}`)" for item in items
                for fixture, marker in [*((f, "training") for f in TRAINING_FIXTURES),
                                        ("full_data", "full_data")]
                if fixture in getattr(item, "fixturenames", ())
                and item.get_closest_marker(marker) is None]
    if unmarked:
        raise pytest.UsageError("tests without the marker their fixtures need:\n  "
                                + "\n  ".join(unmarked))
    no_data = pytest.mark.skip(
        reason=f"needs the whole data set at {FULL_DATA} (absent, as in a fresh clone; set "
               "PNEUMOCNN_DATA to its folder)")
    no_tensorflow = pytest.mark.skip(
        reason="needs TensorFlow: pip install 'pneumocnn[train]' (or select -m 'not training')")
    no_dask = pytest.mark.skip(reason="needs Dask: pip install 'pneumocnn[dask]'")
    have_data = FULL_TRAIN.is_dir()
    have_tensorflow = importlib.util.find_spec("tensorflow") is not None
    have_dask = importlib.util.find_spec("distributed") is not None
    for item in items:
        if not have_data and item.get_closest_marker("full_data") is not None:
            item.add_marker(no_data)
        if not have_tensorflow and item.get_closest_marker("training") is not None:
            item.add_marker(no_tensorflow)
        if not have_dask and item.get_closest_marker("dask") is not None:
            item.add_marker(no_dask)
