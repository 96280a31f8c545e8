"""pneumocnn.runtime.evaluation: evaluate() on a labelled folder gives each file the answer
predict() gives it."""

from __future__ import annotations

import pytest
from helpers import TINY_INT8, XRAYS

import pneumocnn


def test_evaluate_and_predict_agree_on_real_files():
    """The same file gives the same probability through evaluate() and predict()."""
    model = pneumocnn.load(TINY_INT8)
    evaluation = pneumocnn.evaluate(model, XRAYS)
    by_file = {p.source: p.probability for p in evaluation.predictions}
    for path in sorted(XRAYS.rglob("*.jpeg"))[:6]:
        assert model.predict(path).probability == pytest.approx(by_file[str(path)], abs=0)
