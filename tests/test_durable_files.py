"""pneumocnn.core.durable_files: atomic writes (a full disk leaves the previous file intact; files
get the usual permissions), the temporaries of killed writers, the one CSV resume rule."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pneumocnn
from pneumocnn.core.durable_files import resume_csv

# ---------------------------------------------------------------------------------------------
# atomic writes: a full disk, permissions, temporaries


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDisk:
    """A binary file whose writes fail as on a full disk."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, data) -> int:
        _no_space()

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stream.close()


@pytest.mark.training
@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_full_disk_while_writing_a_model_keeps_the_previous_file(tiny_run, tmp_path, monkeypatch,
                                                                  failing):
    """The OS layer fails as on a full disk while a .keras and a .tflite file are replaced:
    a clear error naming the file, the previous file intact and loadable, nothing left over."""
    from pneumocnn.core.durable_files import write_bytes
    from pneumocnn.training.export import save_keras

    keras_path, tflite_path = tmp_path / "model.keras", tmp_path / "model-int8.tflite"
    shutil.copy(tiny_run.keras_model, keras_path)
    shutil.copy(tiny_run.tflite_models["int8"], tflite_path)
    before = {path: path.read_bytes() for path in (keras_path, tflite_path)}
    loaded = pneumocnn.load(keras_path)
    if failing == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *args, **kw: _FullDisk(real_fdopen(*args, **kw)))
    else:
        monkeypatch.setattr(os, failing, _no_space)
    writes = {keras_path: lambda: save_keras(loaded.backend.keras_model, loaded.description, keras_path),
              tflite_path: lambda: write_bytes(tflite_path, b"a new model" * 1000)}
    for path, write in writes.items():
        with pytest.raises(OSError) as caught:
            write()
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert "No space left on device" in message and str(path) in message
        assert "previous file, if any, is unchanged" in message
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-int8.tflite", "model.keras"]
    for path in before:
        assert pneumocnn.load(path).predict(np.full((8, 8), 0.5)).ok


@pytest.mark.training
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"),
                    reason="mounting a small tmpfs needs root on Linux")
def test_really_full_disk_keeps_the_previous_model(tiny_run, tmp_path):
    """The same on a real 768 KiB tmpfs: a 0.2 MB int8 model is there, a 0.8 MB float32 model
    does not fit beside it while it is being replaced."""
    from pneumocnn.core.durable_files import write_bytes

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = disk / "model.tflite"
        shutil.copy(tiny_run.tflite_models["int8"], target)
        before = target.read_bytes()
        bigger = tiny_run.tflite_models["float32"].read_bytes()
        assert len(before) + len(bigger) > 768 << 10
        with pytest.raises(OSError, match="No space left on device: cannot write") as caught:
            write_bytes(target, bigger)
        assert caught.value.errno == errno.ENOSPC
        assert target.read_bytes() == before and [p.name for p in disk.iterdir()] == [target.name]
        assert pneumocnn.load(target).predict(np.full((8, 8), 0.5)).ok
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.training
def test_model_files_get_the_usual_permissions(tiny_run):
    """Atomic writes go through mkstemp (mode 0600); the files they leave get the mode open()
    would give, so that a service account can read the model a training account wrote."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [tiny_run.keras_model, *tiny_run.tflite_models.values()]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    from pneumocnn.core.durable_files import remove_temporaries

    (tmp_path / ".model.keras.x1y2.tmp").write_bytes(b"half a model")
    (tmp_path / ".epoch-0003.keras.a1b2.tmp").mkdir()
    (tmp_path / ".epoch-0003.keras.a1b2.tmp" / "epoch-0003.keras").write_bytes(b"staged")
    (tmp_path / "model.keras").write_bytes(b"complete")
    (tmp_path / "notes.tmp").write_bytes(b"not ours: no leading dot")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "notes.tmp"]


# ---------------------------------------------------------------------------------------------
# resume_csv: a last row that a kill cut short is dropped and cut off


def test_resume_csv_drops_and_cuts_off_an_unfinished_last_row(tmp_path):
    path = tmp_path / "rows.csv"
    assert resume_csv(path, ["a", "b"], "test") == [] and not path.exists()
    path.write_bytes(b"a,b\n1,2\n3,")
    assert resume_csv(path, ["a", "b"], "test") == [{"a": "1", "b": "2"}]
    assert path.read_bytes() == b"a,b\n1,2\n"
    path.write_bytes(b"a,")  # killed while writing the header
    assert resume_csv(path, ["a", "b"], "test") == [] and path.read_bytes() == b""


def test_resume_csv_refuses_a_foreign_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "foreign.csv"
    path.write_bytes(b"patient,finding\nA,none\nB,")
    with pytest.raises(ValueError, match="not a test file"):
        resume_csv(path, ["a", "b"], "test")
    assert path.read_bytes() == b"patient,finding\nA,none\nB,"
