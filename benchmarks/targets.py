"""The issue's targets, as ratios of figures measured in this run, each PASS or FAIL, with the
figure from the same run that puts each one in context (what bounds it, where known)."""

from __future__ import annotations

import math

from benchmarks.variants import thread_counts

INT8 = "litert-int8-{}t"


def _row(name: str, value: float | None, goal: str, ok: bool | None, unit: str = "",
         context: str = "") -> dict:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"target": name, "measured": None, "goal": goal, "result": "N/A", "context": context}
    return {"target": name, "measured": value, "unit": unit, "goal": goal,
            "result": "PASS" if ok else "FAIL", "context": context}


def _ratio(latency: dict, slow: str, fast: str) -> float | None:
    if slow not in latency or fast not in latency:
        return None
    return latency[slow]["median_ms"] / latency[fast]["median_ms"]


def _latency_rows(latency: dict) -> list[dict]:
    rows = []
    for t in thread_counts():
        int8 = INT8.format(t)
        speedup = _ratio(latency, "keras-predict", int8)
        compiled = _ratio(latency, "keras-compiled", int8)
        rows.append(_row(f"int8 ({t} thread(s)) batch-1 latency vs Keras model.predict", speedup,
                         ">= 100x faster", speedup is not None and speedup >= 100, "x",
                         f"vs Keras compiled call: {compiled:.1f}x" if compiled else ""))
    for t in thread_counts():
        int8, float32 = INT8.format(t), f"litert-float32-{t}t"
        speedup = _ratio(latency, float32, int8)
        bare = _ratio(latency, f"{float32}:bare", f"{int8}:bare")
        rows.append(_row(f"int8 vs LiteRT float32, {t} thread(s)", speedup, ">= 3x faster",
                         speedup is not None and speedup >= 3, "x",
                         f"bare interpreter invoke alone: {bare:.2f}x" if bare else ""))
    for t in thread_counts():
        speedup = _ratio(latency, f"onnxruntime-float32-{t}t", INT8.format(t))
        rows.append(_row(f"int8 vs ONNX Runtime float32, {t} thread(s)", speedup, "> 1x (faster)",
                         speedup is not None and speedup > 1, "x"))
    return rows


def _quality_rows(quality: dict) -> list[dict]:
    reference, quantized = quality["keras-compiled"], quality.get(INT8.format(thread_counts()[-1]))
    if not quantized:
        return []
    one_image = f"one image = {100 / reference['n']:.2f} point ({reference['n']} images)"
    drop = (reference["accuracy"] - quantized["accuracy"]) * 100
    auc = reference["roc_auc"] - quantized["roc_auc"]
    agree = quantized["agreement"] * 100
    return [
        _row("int8 accuracy drop vs float", drop, "<= 0.5 point", drop <= 0.5, " points", one_image),
        _row("int8 ROC AUC drop vs float", auc, "<= 0.005", auc <= 0.005),
        _row("int8 label agreement with float", agree, ">= 99 %", agree >= 99, " %", one_image),
    ]


def evaluate_targets(results: dict) -> list[dict]:
    """Every target row from a results dict (see ``benchmarks.__main__``)."""
    rows = _latency_rows(results["latency"]) + _quality_rows(results["quality"])
    e2e = results.get("end_to_end")
    if e2e:
        floor = e2e["floor"]["median_pass_s"]
        ratio = e2e["pneumocnn"]["median_pass_s"] / floor
        rows.append(_row("pneumocnn predict on full-size JPEG vs decode-and-resize floor", ratio,
                         "<= 1.3x", ratio <= 1.3, "x",
                         f"naive PIL + Keras path: {e2e['naive']['median_pass_s'] / floor:.1f}x"))
    cold = results.get("cold_start")
    if cold:
        ours, keras = cold["pneumocnn (LiteRT int8)"], cold["Keras (TensorFlow float)"]
        rows.append(_row("runtime cold start (import to first answer)", ours["median_s"],
                         "<= 0.3 s", ours["median_s"] <= 0.3, " s", f"Keras: {keras['median_s']:.2f} s"))
        rows.append(_row("runtime peak RSS", ours["max_peak_rss_mb"], "<= 80 MB",
                         ours["max_peak_rss_mb"] <= 80, " MB", f"Keras: {keras['max_peak_rss_mb']:.0f} MB"))
    pipes = results.get("pipeline", {}).get("pipelines")
    if pipes:
        rows += _pipeline_rows(pipes)
    return rows


def _pipeline_rows(pipes: dict) -> list[dict]:
    ours, floor, seed = pipes["pneumocnn"], pipes["in-memory"], pipes["seed"]
    ratio = ours["epoch_s"] / floor["epoch_s"]
    rows = [_row("training epoch vs in-memory floor", ratio, "<= 1.1x", ratio <= 1.1, "x",
                 f"CPU seconds: {ours['cpu_s'] / floor['cpu_s']:.2f}x")]
    if "epoch_s" not in seed:
        return rows + [_row("training epoch vs seed generator", None, ">= 2x faster", None,
                            context=seed.get("error", ""))]
    ratio = seed["epoch_s"] / ours["epoch_s"]
    rows.append(_row("training epoch vs seed generator", ratio, ">= 2x faster", ratio >= 2, "x",
                     f"CPU seconds: {seed['cpu_s'] / ours['cpu_s']:.2f}x; ceiling: even the in-memory "
                     f"floor is only {seed['epoch_s'] / floor['epoch_s']:.2f}x faster than the seed"))
    return rows
