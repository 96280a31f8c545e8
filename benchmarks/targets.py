"""The issue's targets, as ratios of figures measured in this run, each PASS or FAIL, with the
figure from the same run that puts each one in context (what bounds it, where known).

The rows comparing one variant with another (int8 against float32, ONNX Runtime, Keras) are
facts about this CPU: which variant is fastest depends on its instruction set (int8 dot products
need VNNI, AMX or ARM dotprod), so their context names the CPU's class. The promise pneumocnn
can keep on every CPU is the default rows': ``pneumocnn.load()`` picks, on the CPU it runs on,
a variant about as fast as the fastest one shipped."""

from __future__ import annotations

import math

from benchmarks.coldstart import BARE_LITERT, KERAS_KIND, OURS
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


def _default_rows(results: dict) -> list[dict]:
    """Per thread count: the default load()'s median batch-1 latency over the fastest LiteRT
    variant's among those it chose from (the folder's variants), timed in the same rounds."""
    latency, rows = results["latency"], []
    for v in results["variants"]:
        if not v.get("default") or v["key"] not in latency:
            continue
        t = v["threads"]
        shipped = {q: latency[f"litert-{q}-{t}t"]["median_ms"] for q in v["candidates"]
                   if f"litert-{q}-{t}t" in latency}
        if not shipped:
            continue
        fastest = min(shipped, key=shipped.get)
        ratio = latency[v["key"]]["median_ms"] / shipped[fastest]
        timed = ", ".join(f"{q} {ms:.2f} ms" for q, ms in sorted(shipped.items(), key=lambda item: item[1]))
        rows.append(_row(f"default load() vs the fastest shipped LiteRT variant, {t} thread(s)", ratio,
                         "<= 1.10x", ratio <= 1.10, "x",
                         f"chose {v['quantization']}; same rounds: {timed}"))
    return rows


def _tie_row(results: dict) -> list[dict]:
    defaults = [v for v in results["variants"] if v.get("default") and v["key"] in results["quality"]]
    if not defaults:
        return []
    q = results["quality"][defaults[-1]["key"]]
    return [_row("largest tie of the default's probabilities", q["largest_tie_pct"], "<= 1 % of images",
                 q["largest_tie_pct"] <= 1.0, " %",
                 f"{q['largest_tie']} of {q['tie_images']} distinct images share one probability; "
                 f"{q['distinct_probabilities']} distinct probabilities")]


def _cpu(results: dict) -> str:
    features = results.get("machine", {}).get("cpu_features")
    return f"this CPU: {features['class']}" if features else ""


def _latency_rows(latency: dict, cpu: str = "") -> list[dict]:
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
        context = "; ".join(part for part in (
            f"bare interpreter invoke alone: {bare:.2f}x" if bare else "", cpu) if part)
        rows.append(_row(f"int8 vs LiteRT float32, {t} thread(s)", speedup, ">= 3x faster",
                         speedup is not None and speedup >= 3, "x", context))
    for t in thread_counts():
        speedup = _ratio(latency, f"onnxruntime-float32-{t}t", INT8.format(t))
        rows.append(_row(f"int8 vs ONNX Runtime float32, {t} thread(s)", speedup, "> 1x (faster)",
                         speedup is not None and speedup > 1, "x", cpu))
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
    rows = (_default_rows(results) + _peer_rows(results) + _latency_rows(results["latency"], _cpu(results))
            + _quality_rows(results["quality"]) + _tie_row(results))
    e2e = results.get("end_to_end")
    if e2e:
        floor = e2e["floor"]["median_pass_s"]
        ratio = e2e["pneumocnn"]["median_pass_s"] / floor
        if "decode+invoke" in e2e:
            bare = e2e["pneumocnn"]["median_pass_s"] / e2e["decode+invoke"]["median_pass_s"]
            folder = e2e.get("folder", {}).get("vs_single_calls")
            rows.append(_row("pneumocnn predict(path) vs decode + preprocess + bare LiteRT invoke",
                             bare, "<= 1.15x", bare <= 1.15, "x",
                             f"same model file; whole folder in one predict call: {folder:.2f}x "
                             "the single-file calls' images/s" if folder else "same model file"))
        rows.append(_row("pneumocnn predict on full-size JPEG vs decode-and-resize floor", ratio,
                         "<= 1.3x", ratio <= 1.3, "x",
                         f"naive PIL + Keras path: {e2e['naive']['median_pass_s'] / floor:.1f}x"))
    cold = results.get("cold_start")
    if cold:
        rows += _cold_rows(cold)
    pipes = results.get("pipeline", {}).get("pipelines")
    if pipes:
        rows += _pipeline_rows(pipes)
    return rows


def _cold_rows(cold: dict) -> list[dict]:
    ours, bare, keras = cold[OURS], cold[BARE_LITERT], cold[KERAS_KIND]
    ratios = cold["vs_bare"]
    return [
        _row("runtime cold start (import to first answer)", ours["median_s"], "<= 0.3 s",
             ours["median_s"] <= 0.3, " s", f"Keras: {keras['median_s']:.2f} s; bare LiteRT: "
                                            f"{bare['median_s']:.2f} s"),
        _row("runtime peak RSS", ours["max_peak_rss_mb"], "<= 80 MB", ours["max_peak_rss_mb"] <= 80,
             " MB", f"Keras: {keras['max_peak_rss_mb']:.0f} MB"),
        _row("fresh process predict(file) vs bare LiteRT decode + invoke, whole process",
             ratios["median_process_wall_s"], "<= 1.5x", ratios["median_process_wall_s"] <= 1.5, "x",
             f"{ours['median_process_wall_s']:.3f} against {bare['median_process_wall_s']:.3f} s"),
        _row("fresh process predict(file) vs bare LiteRT decode + invoke, peak RSS",
             ratios["median_peak_rss_mb"], "<= 1.2x", ratios["median_peak_rss_mb"] <= 1.2, "x",
             f"{ours['median_peak_rss_mb']:.1f} against {bare['median_peak_rss_mb']:.1f} MB"),
    ]


def _peer_rows(results: dict) -> list[dict]:
    """Per thread count: the default load()'s median batch-1 latency over the fastest ONNX
    Runtime row's (float32 or int8), timed in the same rounds."""
    latency, rows = results["latency"], []
    for v in results["variants"]:
        if not v.get("default") or v["key"] not in latency:
            continue
        t = v["threads"]
        peers = {q: latency[f"onnxruntime-{q}-{t}t"]["median_ms"] for q in ("float32", "int8")
                 if f"onnxruntime-{q}-{t}t" in latency}
        if not peers:
            continue
        fastest = min(peers, key=peers.get)
        ratio = latency[v["key"]]["median_ms"] / peers[fastest]
        rows.append(_row(f"default load() vs the fastest ONNX Runtime row, {t} thread(s)", ratio,
                         "<= 1.00x", ratio <= 1.0, "x",
                         f"chose {v['quantization']} ({latency[v['key']]['median_ms']:.2f} ms); "
                         f"ONNX Runtime {fastest} {peers[fastest]:.2f} ms"))
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
