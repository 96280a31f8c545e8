"""The CSV file of ``predict --csv``: one row per :class:`~pneumocnn.runtime.model.Prediction`,
written and flushed as each arrives (one process or a Dask cluster), resumed after a kill.

Resuming keeps the rows already in the file (by the rule of
:func:`~pneumocnn.core.durable_files.resume_rows`) and remembers which inputs they name as a
:class:`NameSet`: 8 bytes a name, so a file of a million rows costs 8 MB to resume, not the
~100 MB of a Python set of the path strings.
"""

from __future__ import annotations

import csv
import hashlib
import os
from array import array
from collections.abc import Iterable
from types import TracebackType

import numpy as np

from pneumocnn.core.durable_files import resume_rows
from pneumocnn.runtime.model import RECORD_FIELDS, Prediction

COLUMNS = list(RECORD_FIELDS)


class NameSet:
    """A set of names for membership tests (``name in names``), held as the sorted 64-bit
    BLAKE2b digests of their UTF-8 bytes (8 bytes a name).

    Two different names share a digest with probability about ``n**2 / 2**65`` for ``n``
    names (3e-8 for a million), in which case one of them would be taken as present."""

    def __init__(self, names: Iterable[str]) -> None:
        digests = np.frombuffer(array("Q", (_digest(name) for name in names)), dtype=np.uint64)
        digests.sort()  # in place, in the array's own buffer: no copy
        unique = np.ones(len(digests), dtype=bool)
        unique[1:] = digests[1:] != digests[:-1]
        self._digests = digests[unique]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not len(self._digests):
            return False
        digest = np.uint64(_digest(name))
        index = int(np.searchsorted(self._digests, digest))
        return index < len(self._digests) and self._digests[index] == digest

    def __len__(self) -> int:
        return len(self._digests)


def _digest(name: str) -> int:
    data = name.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class PredictionsCSV:
    """Write predictions to a CSV file of :data:`COLUMNS`, a row at a time, each flushed as
    written (a kill loses at most the row being written, which ``resume`` then drops).

    With ``resume``, the rows already in the file are kept: ``done`` names their inputs (to be
    skipped) and ``failed`` counts those with an error; new rows are appended. Without it, the
    file is replaced. File names that are not UTF-8 are written as their original bytes. Use it
    as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False) -> None:
        self.failed = 0
        self.done = NameSet(self._kept(path) if resume else ())
        self._stream = open(path, "a" if resume else "w", newline="",  # noqa: SIM115
                            encoding="utf-8", errors="surrogateescape")
        self._writer = csv.DictWriter(self._stream, fieldnames=COLUMNS)
        if self._stream.tell() == 0:
            self._writer.writeheader()

    def _kept(self, path: str | os.PathLike) -> Iterable[str]:
        for row in resume_rows(path, COLUMNS, "`pneumocnn predict --csv`"):
            self.failed += bool(row["error"])
            yield row["source"]

    def write(self, prediction: Prediction) -> None:
        """Append ``prediction``'s row and flush it to the file."""
        self._writer.writerow(prediction.to_dict())
        self._stream.flush()

    def close(self) -> None:
        """Close the file."""
        self._stream.close()

    def __enter__(self) -> PredictionsCSV:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
