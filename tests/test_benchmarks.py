"""The benchmark suite's --quick path on the tiny model: it runs end to end and writes a table,
a JSON file and a plot of the expected structure (speeds are not checked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FULL_RESOLUTION, real_images


@pytest.mark.training
def test_quick_benchmark_writes_results(tiny_run, tiny_data, tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "results"
    results = main(["--quick", "--run", str(tiny_run.run_dir), "--data", str(tiny_data),
                    "--train-data", str(tiny_data), "--full-resolution", str(FULL_RESOLUTION),
                    "--out", str(out)])

    assert sorted(p.name for p in out.iterdir()) == ["latency_vs_accuracy.png", "results.json",
                                                     "results.md"]
    stored = json.loads((out / "results.json").read_text())
    assert stored["mode"] == "quick"
    for key in ("cpu", "cores", "python", "versions", "threads"):
        assert key in stored["machine"]
    assert {"numpy", "tensorflow", "ai-edge-litert", "onnxruntime"} <= set(stored["machine"]["versions"])

    keys = [v["key"] for v in results["variants"]]
    assert keys[:2] == ["keras-predict", "keras-compiled"]
    for quantization in ("float32", "float16", "dynamic-int8", "int8"):
        assert f"litert-{quantization}-1t" in keys
    assert any(k.startswith("onnxruntime-float32") for k in keys)
    for variant in results["variants"]:
        if variant["error"]:  # a variant that cannot run says why, and is in the table
            assert variant["label"] in (out / "results.md").read_text()
            continue
        key = variant["key"]
        assert {"accuracy", "roc_auc", "sensitivity", "specificity", "agreement",
                "max_abs_diff"} <= set(results["quality"][key])
        assert results["latency"][key]["n"] >= 1
        assert results["latency"][key]["p95_ms"] >= results["latency"][key]["median_ms"] > 0
        assert results["throughput"][key]["images_per_s"] > 0
    assert results["quality"]["keras-compiled"]["agreement"] == 1.0

    assert set(results["end_to_end"]) == {"pneumocnn", "floor", "naive decode", "naive"}
    cold = results["cold_start"]["pneumocnn (LiteRT int8)"]
    assert cold["median_s"] > 0 and cold["max_peak_rss_mb"] > 0
    assert not cold["tensorflow_imported"]
    assert set(results["pipeline"]["pipelines"]) == {"pneumocnn", "in-memory", "seed"}
    assert all(t["result"] in ("PASS", "FAIL", "N/A") for t in results["targets"])

    table = (out / "results.md").read_text()
    for heading in ("## Variants", "## Cold start", "## End to end", "## Training input pipeline",
                    "## Targets"):
        assert heading in table
    header = next(line for line in table.splitlines() if line.startswith("| variant |"))
    for column in ("accuracy", "ROC AUC", "sensitivity", "specificity", "agreement %", "max abs diff",
                   "size MB", "median ms", "p95 ms", "batch-32 img/s"):
        assert column in header


def test_every_simulated_shift_changes_a_real_xray_and_keeps_it_gray():
    from PIL import Image

    from benchmarks.shifts import SHIFTS

    xray = Image.open(real_images("NORMAL", 1)[0]).convert("L")
    for name, shift in SHIFTS.items():
        shifted = shift(xray)
        assert shifted.mode == "L", name
        assert shifted.size == xray.size or name.startswith("zoom"), name
        assert not np.array_equal(np.asarray(shifted.resize(xray.size)), np.asarray(xray)), name


@pytest.mark.training
def test_study_scores_runs_and_tabulates_folds(tiny_run, tiny_data, tmp_path):
    """A run's scores.json, and the table over two folds of one configuration: mean +- sd."""
    import json
    import shutil

    from benchmarks.study import BY_NAME, main, score_run

    for fold in (0, 1):
        shutil.copytree(tiny_run.run_dir, tmp_path / "runs" / "small-bn" / f"fold-{fold}",
                        ignore=shutil.ignore_patterns("cache", "checkpoints", ".lock"))
    scores = score_run(tmp_path / "runs" / "small-bn" / "fold-0", tiny_data)
    assert set(scores["shifts"]) == set(__import__("benchmarks.shifts").shifts.SHIFTS)
    assert scores["official_val"] is None  # tiny_data has no val folder
    validation = scores["validation"]["at_model_threshold"]
    assert validation["n"] == tiny_run.metrics["validation"]["n"]
    assert validation["accuracy"] == pytest.approx(tiny_run.metrics["tflite"]["int8"]["accuracy"])
    # the second fold scores differently: make its figures differ to see the spread
    changed = json.loads(json.dumps(scores))
    changed["validation"]["at_model_threshold"]["roc_auc"] = 0.5
    (tmp_path / "runs" / "small-bn" / "fold-1" / "scores.json").write_text(json.dumps(changed))
    assert main(["--report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| small-bn |"))
    auc = (validation["roc_auc"] + 0.5) / 2
    assert f"| 2 | {auc:.3f} ± " in row
    assert BY_NAME["small-bn"].note in table
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())) == {"small-bn"}


@pytest.mark.training
def test_the_default_recipe_is_the_studys_chosen_configuration():
    import dataclasses

    from benchmarks.study import BY_NAME, CHOSEN, study_settings
    from pneumocnn.training.trainer import TrainingConfig, make_config

    studied = make_config("seed", **study_settings(BY_NAME[CHOSEN], fold=0))
    assert dataclasses.replace(studied, fold=None) == TrainingConfig()
