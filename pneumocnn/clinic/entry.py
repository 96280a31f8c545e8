"""A worklist entry: one input's row of ``scores.csv`` and ``worklist.csv``."""

from __future__ import annotations

from pneumocnn.core.dicom import IDENTIFIERS

COLUMNS = ["probability", "label", "threshold", "file", *IDENTIFIERS, "error"]
