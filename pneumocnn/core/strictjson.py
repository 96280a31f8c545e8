"""Strict JSON for everything pneumocnn prints or writes: a number that is not finite (NaN for
an input that was not scored, or a metric that is undefined, such as ROC AUC on one class)
becomes ``null``. Python's ``json`` writes such numbers as ``NaN`` or ``Infinity``, which strict
parsers (jq, JavaScript, most databases) refuse."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``, through dicts, lists
    and tuples (tuples become lists, as in JSON)."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, refusing (``ValueError``) any NaN or
    infinity that could still reach the text."""
    return json.dumps(finite(value), allow_nan=False, **options)
