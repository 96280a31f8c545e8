"""The bundled model and the examples that use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pneumocnn
from pneumocnn.core.modelfile import read_tflite_description

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_bundled_models_are_small_described_variants_of_one_model():
    model = pneumocnn.load()
    assert model.variant.candidates == ("dynamic-int8", "float16", "int8")
    assert model.labels == ("NORMAL", "PNEUMONIA") and 0.0 < model.threshold < 1.0
    for name in model.variant.candidates:
        path = Path(pneumocnn.load(variant=name).path)
        assert path.name == f"pneumonia-{name}.tflite"
        assert path.stat().st_size < 1_000_000
        description = read_tflite_description(path.read_bytes(), str(path))
        assert description.info["quantization"] == name
        assert description.preprocessing.channels == 1
        assert description.info["provenance"]["validation_images"] > 0


def test_bundled_model_was_made_by_the_default_recipe():
    """`pneumocnn train DATA` (the default recipe) is the command that made the bundled model."""
    from pneumocnn.training.settings import TrainingConfig, config_from_dict

    provenance = pneumocnn.load().description.info["provenance"]
    assert config_from_dict(provenance["config"]) == TrainingConfig()
    assert provenance["validation_images"] == 523 and provenance["train_images"] == 4693


def test_bundled_model_scores_the_example_xrays():
    results = pneumocnn.predict(EXAMPLES / "xrays")
    assert len(results) == 4 and all(r.ok for r in results)
    by_name = {Path(r.source).name: r.label for r in results}
    assert by_name["NORMAL2-IM-0402-0001.jpeg"] == "NORMAL"  # held out from training
    assert by_name["person1340_virus_2312.jpeg"] == "PNEUMONIA"  # held out from training


def test_examples_run(tmp_path):
    quickstart = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")],
                                capture_output=True, text=True)
    assert quickstart.returncode == 0, quickstart.stderr
    assert "person1340_virus_2312.jpeg" in quickstart.stdout
    out = tmp_path / "scores.csv"
    scoring = subprocess.run([sys.executable, str(EXAMPLES / "score_folder_to_csv.py"),
                              str(EXAMPLES / "xrays"), str(out)], capture_output=True, text=True)
    assert scoring.returncode == 0, scoring.stderr
    assert len(out.read_text().splitlines()) == 5
