"""Atomic file writes: write beside the target, flush to disk, then rename over it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pneumocnn.core.errors import PneumocnnError

TEMPORARY = ".tmp"


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary stream whose content replaces ``path`` only if the block succeeds;
    on any error the previous file, if any, is left untouched. An ``OSError`` (a full disk, say)
    is raised again naming ``path``. A kill leaves at most a ``.NAME.*.tmp`` file beside it,
    which :func:`remove_temporaries` deletes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, f"{error.strerror}: cannot write {path}; the previous "
                                       "file, if any, is unchanged") from error
        raise


def remove_temporaries(folder: str | Path) -> None:
    """Delete the ``.*.tmp`` files and folders a killed writer left in ``folder``; call it only
    while holding the folder's lock."""
    for leftover in Path(folder).glob(f".*{TEMPORARY}"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_write(path) as stream:
        stream.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    write_bytes(path, text.encode("utf-8", "surrogateescape"))  # non-UTF-8 file names as they are


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, or raise ``PneumocnnError`` at once
    naming ``what`` if another process holds it. The lock dies with its process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        try:
            _lock(handle)
        except OSError:
            raise PneumocnnError(f"{what} is in use by another process (lock {path})") from None
        try:
            yield
        finally:
            _unlock(handle)


if os.name == "nt":
    import msvcrt

    def _lock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
