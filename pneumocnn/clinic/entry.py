"""A worklist entry: what the clinic services know of one input, read once.

An :class:`Entry` holds the input's :class:`~pneumocnn.runtime.model.Prediction` (scored, or
not with the reason), the study identifiers of a DICOM file and, for a DICOM file just read,
its header (:class:`~pneumocnn.core.dicom.DicomHeader`). The worklist ranks entries and lists
them, ``scores.csv`` and ``worklist.csv`` hold one row of :data:`COLUMNS` each, and the DICOM
node's Structured Report is written from one. A row read back from ``scores.csv`` gives the
entry again, without the header (the CSV holds the identifiers only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pneumocnn.core.dicom import IDENTIFIERS, DicomHeader
from pneumocnn.runtime.model import Prediction

COLUMNS = ["probability", "label", "threshold", "file", *IDENTIFIERS, "error"]


def decimal(value: float) -> str:
    """A probability or threshold as the worklist and the report write it: six decimals."""
    return f"{value:.6f}"


@dataclass(frozen=True)
class Entry:
    """One input of the worklist: its ``prediction`` (its ``source`` is the file's name), the
    study ``identifiers`` of a DICOM file (``{}`` for other inputs; kept for a file not scored
    too, so that a clinic matches it to its study) and, for a DICOM file just read, its
    ``header``."""

    prediction: Prediction
    identifiers: dict[str, str] = field(default_factory=dict)
    header: DicomHeader | None = None

    @classmethod
    def of(cls, prediction: Prediction, header: DicomHeader | None) -> Entry:
        """The entry of an input read with ``header`` (None: not a DICOM file, or one whose
        header could not be read)."""
        return cls(prediction, header.identifiers if header else {}, header)

    @property
    def file(self) -> str:
        """The input's name."""
        return self.prediction.source

    @property
    def error(self) -> str:
        """Why the input was not scored; ``""`` when it was."""
        return self.prediction.error or ""

    def not_scored(self, reason: str) -> Entry:
        """This entry, not scored for ``reason`` (its identifiers and header kept)."""
        return replace(self, prediction=not_scored(self.file, reason))

    def row(self) -> dict[str, str]:
        """The entry's row of :data:`COLUMNS`: probability, label and threshold when scored,
        else the error; the identifiers either way."""
        row = dict.fromkeys(COLUMNS, "")
        row.update(self.identifiers, file=self.file, error=self.error)
        if self.prediction.ok:
            row.update(probability=decimal(self.prediction.probability),
                       label=self.prediction.label or "",
                       threshold=decimal(self.prediction.threshold))
        return row

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Entry:
        """The entry a row of :data:`COLUMNS` (as :meth:`row` wrote it) holds."""
        identifiers = {key: row[key] for key in IDENTIFIERS if row.get(key)}
        if row["error"]:
            return cls(not_scored(row["file"], row["error"]), identifiers)
        return cls(Prediction(row["file"], row["label"] or None, float(row["probability"]),
                              float(row["threshold"])), identifiers)


def not_scored(file: str, reason: str) -> Prediction:
    """The result of an input the clinic lists without a score, for ``reason``."""
    return Prediction(file, None, math.nan, math.nan, reason)
