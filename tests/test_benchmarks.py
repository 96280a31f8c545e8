"""The benchmark suite's --quick path on the tiny model: it runs end to end and writes a table,
a JSON file and a plot of the expected structure (speeds are not checked)."""

from __future__ import annotations

import json

from conftest import FULL_RESOLUTION


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
