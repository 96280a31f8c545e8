"""Atomic file writes (write beside the target, flush to disk, then rename over it), and the
one resume rule of the CSV files that are appended to a row at a time."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pneumocnn.core.errors import PneumocnnError

TEMPORARY = ".tmp"


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
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


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete the ``.*.tmp`` files and folders a killed writer left in ``folder``; call it only
    while holding the folder's lock."""
    for leftover in Path(folder).glob(f".*{TEMPORARY}"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_write(path) as stream:
        stream.write(data)


def write_durably(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` and flush its folder to disk too (see
    :func:`durable_write`)."""
    with durable_write(path) as stream:
        stream.write(data)


@contextlib.contextmanager
def durable_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """:func:`atomic_write`, and the folder flushed to disk too, so that once the block is over
    the file survives a crash or a power cut under its name (the rename itself is on disk;
    folders cannot be flushed on Windows, where the rename is left to the system)."""
    path = Path(path)
    with atomic_write(path) as stream:
        yield stream
    if os.name != "nt":
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    write_bytes(path, text.encode("utf-8", "surrogateescape"))  # non-UTF-8 file names as they are


def resume_csv(path: str | os.PathLike, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV file written a row at a time (``predict --csv``, triage's
    ``scores.csv``) by a run that may have been killed, ready to be appended to: the list
    :func:`resume_rows` streams."""
    return list(resume_rows(path, columns, what))


def resume_rows(path: str | os.PathLike, columns: Sequence[str], what: str) -> Iterator[dict[str, str]]:
    """Stream the rows of a CSV file written a row at a time by a run that may have been
    killed (one row in memory at a time, however long the file), and make it ready to be
    appended to.

    A last line without its newline is a row the kill cut short: it is dropped and cut off the
    file (before this returns), so that the next row appended starts on a line of its own.
    Nothing when the file does not exist or is empty; a header other than ``columns`` raises
    ``ValueError`` naming ``what`` (here, not when iterating) and leaves the file as it was.
    Text is UTF-8, with file names that are not UTF-8 kept as their bytes
    (``surrogateescape``)."""
    path = Path(path)
    if not path.exists():
        return iter(())
    complete = _complete_length(path)
    if complete:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as stream:
            header = next(csv.reader(stream), [])
        if header != list(columns):
            raise ValueError(f"{path}: not a {what} file (columns {header})")
    if complete < path.stat().st_size:
        with path.open("r+b") as stream:
            stream.truncate(complete)
    return _rows(path) if complete else iter(())


def _complete_length(path: Path, block: int = 1 << 16) -> int:
    """The length of ``path`` up to and including its last newline (0 if it has none), read
    backwards a block at a time."""
    with path.open("rb") as stream:
        end = stream.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - block)
            stream.seek(start)
            newline = stream.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as stream:
        yield from csv.DictReader(stream)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
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


if sys.platform == "win32":  # the form type checkers read as a platform
    import msvcrt

    def _lock(handle: BinaryIO) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle: BinaryIO) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(handle: BinaryIO) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle: BinaryIO) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
