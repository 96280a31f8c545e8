"""Finding the inputs to score: image files in folders (recursive), manifests that list
them, and iterables of inputs, expanded lazily.

A manifest is a file that lists inputs, recognised by its name: ``.txt`` or ``.lst``, one path
a line, or ``.csv`` with a ``path`` column (see :func:`read_manifest`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeGuard, cast

import numpy as np
from PIL import Image

from pneumocnn.core.dicom import is_dicom_file
from pneumocnn.core.errors import InputError
from pneumocnn.core.preprocessing import ImageInput

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv"})  # never an image's: see is_manifest
_SINGLE = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)


def is_image_file(path: Path) -> bool:
    """True for an image file name outside hidden folders (``.x``, macOS ``._x`` files)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(
        part.startswith(".") for part in path.parts
    )


def is_single(inputs: object) -> TypeGuard[ImageInput]:
    """True for one input (a file path, bytes, a binary file, a PIL image or an array);
    False for a folder, a manifest or an iterable of inputs."""
    if isinstance(inputs, (str, os.PathLike)):
        return not (Path(inputs).is_dir() or is_manifest(inputs))
    return isinstance(inputs, _SINGLE) or hasattr(inputs, "read") or not isinstance(inputs, Iterable)


def expand_inputs(
    inputs: ImageInput | Iterable[ImageInput],
) -> Iterator[tuple[ImageInput | InputError, str | None]]:
    """Yield ``(input, name)`` for every input, lazily: folders become their image files
    (recursive, sorted), manifests the paths they list (see :func:`read_manifest`), iterables are
    flattened; ``name`` is None for unnamed in-memory inputs. A folder that cannot be listed, or
    a manifest that cannot be read, is yielded as an :class:`InputError` in place of an input."""
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            for file in walk_images(path):
                yield file, file.source if isinstance(file, InputError) else str(file)
        elif is_manifest(path):
            for entry in read_manifest(path):
                yield entry, entry.source if isinstance(entry, InputError) else entry
        else:
            yield inputs, os.fsdecode(inputs)
    elif isinstance(inputs, InputError):
        yield inputs, inputs.source
    elif is_single(inputs):
        name = getattr(inputs, "name", None)
        yield inputs, name if isinstance(name, str) else None
    else:  # not one input, so an iterable of them (which types cannot tell from ImageInput)
        for item in cast("Iterable[ImageInput]", inputs):
            yield from expand_inputs(item)


def is_manifest(path: str | os.PathLike) -> bool:
    """True for a path named like a manifest (``.txt``, ``.lst``, ``.csv``, any case) that is
    not a folder; by name alone, so a missing manifest is reported as one."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES and not Path(path).is_dir()


def read_manifest(path: str | os.PathLike) -> Iterator[str | InputError]:
    """Yield the paths a manifest lists, one line at a time (the list is never held whole).

    ``.txt`` and ``.lst``: one path a line. ``.csv``: the column named ``path`` (other columns
    are ignored). Blank entries and lines starting with ``#`` are skipped and surrounding
    whitespace is dropped; a relative path is taken relative to the manifest's folder. Entries
    are yielded as they are written, without looking at the file system: each names one file
    (a folder or another manifest listed in a manifest is not expanded). UTF-8, with or without
    a byte-order mark; bytes that are not UTF-8 are kept (``surrogateescape``). A manifest that
    cannot be read (missing, no ``path`` column, unreadable part way) yields an
    :class:`InputError` naming it, after the entries read before."""
    name = os.fsdecode(path)
    folder = os.path.dirname(name)
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as stream:
            for entry in _csv_paths(stream, name) if name.lower().endswith(".csv") else stream:
                if isinstance(entry, InputError):
                    yield entry
                    return
                entry = entry.strip()
                if entry and not entry.startswith("#"):
                    yield os.path.join(folder, entry)
    except (OSError, csv.Error) as error:
        reason = getattr(error, "strerror", None) or str(error)
        yield InputError(name, f"manifest cannot be read ({reason})")


def _csv_paths(stream, name: str) -> Iterator[str | InputError]:
    """The ``path`` cells of a CSV manifest, or an :class:`InputError` if it has no such column."""
    rows = csv.reader(stream)
    header = next(rows, [])
    column = next((i for i, title in enumerate(header) if title.strip().lower() == "path"), None)
    if column is None:
        yield InputError(name, f"manifest has no 'path' column (columns: {header})")
        return
    for row in rows:
        if column < len(row):
            yield row[column]


def walk_images(folder: Path) -> Iterator[Path | InputError]:
    """Yield the image and DICOM files under ``folder`` (recursive, sorted, hidden names skipped,
    symlinked folders followed once); a folder that cannot be listed is yielded as an
    :class:`InputError` in its place. Every verb that takes a folder lists it with this."""
    seen: set[Path] = set()
    unreadable: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=unreadable.append, followlinks=True):
        yield from _folder_errors(unreadable)
        real = Path(root).resolve()
        if real in seen:  # a symlink loop: each real folder is walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_image_file(Path(name)) or is_dicom_file(Path(root) / name):
                yield Path(root) / name
    yield from _folder_errors(unreadable)


def _folder_errors(errors: list[OSError]) -> Iterator[InputError]:
    while errors:
        error = errors.pop(0)
        yield InputError(os.fsdecode(error.filename), f"folder cannot be read ({error.strerror})")
