"""Numbers a user reads in the docs agree with the shipped model files: the example X-rays'
probabilities and the threshold, the model card's threshold and calibration, the heatmap scale
docs/triage.md explains."""

from __future__ import annotations

import re

import pytest
from helpers import REPO

import pneumocnn
from pneumocnn.runtime.explain import OCCLUSION_SCALE

VARIANTS = ("int8", "float16")


@pytest.fixture(scope="module")
def bundled() -> dict[str, pneumocnn.Model]:
    return {variant: pneumocnn.load(variant=variant) for variant in VARIANTS}


def thresholds_quoted(text: str) -> list[str]:
    return re.findall(r"threshold\s+(0\.\d+)", text)


def test_the_example_xrays_readme_quotes_what_the_bundled_models_answer(bundled):
    text = (REPO / "examples" / "xrays" / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (NORMAL|PNEUMONIA)[^|]*\|.*\| ([0-9.]+) / ([0-9.]+) \|$",
                      text, flags=re.MULTILINE)
    assert len(rows) == 4
    for name, truth, *quoted in rows:
        for variant, figure in zip(VARIANTS, quoted, strict=True):
            prediction = bundled[variant].predict(REPO / "examples" / "xrays" / name)
            assert f"{prediction.probability:.3f}" == figure, (name, variant)
            assert prediction.label == truth  # "calls all four right"
    for model in bundled.values():
        assert thresholds_quoted(text) == [f"{model.threshold:.3f}"]


def test_the_model_card_quotes_the_models_threshold_and_calibration(bundled):
    text = (REPO / "pneumocnn" / "models" / "pneumonia.md").read_text()
    for model in bundled.values():
        description = model.description
        assert re.search(r"decision\s+threshold (0\.\d+)", text).group(1) == (
            f"{description.threshold:.3f}")
        temperature, bias = re.search(r"sigmoid\(logit\(p\) / ([0-9.]+) \+ ([0-9.]+)\)",
                                      text).groups()
        assert (temperature, bias) == (f"{description.temperature:.3f}",
                                       f"{description.bias:.3f}")


def test_the_triage_docs_quote_the_threshold_and_the_heatmap_scale(bundled):
    text = (REPO / "docs" / "triage.md").read_text()
    assert set(thresholds_quoted(text)) == {f"{bundled['int8'].threshold:.3f}"}
    assert f"log-odds drop of {OCCLUSION_SCALE.top:.1f}" in text
    assert [label for _, label in OCCLUSION_SCALE.ticks] == ["1", "2", "5", "10", "20"]
    assert "1, 2, 5, 10 and 20" in text
