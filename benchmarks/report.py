"""Results out: the machine, the markdown table, ``results.json`` and the latency plot."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from benchmarks.limits import fma_peak, share_of_peak

PACKAGES = ("pneumocnn", "numpy", "pillow", "tensorflow", "keras", "ai-edge-litert", "onnxruntime",
            "onnx", "tf2onnx", "scipy")


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def cpu_seconds() -> tuple[float, float] | None:
    """``(all processes, this process and its children)`` busy CPU seconds so far, from
    ``/proc/stat`` and ``os.times``; None where ``/proc/stat`` is missing."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # less idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


X86_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve")
# macOS names (sysctl) of the same features, to the Linux names above
_MACOS_X86 = {"AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512F": "avx512f",
              "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni", "AVX512BF16": "avx512_bf16",
              "AMXTILE": "amx_tile", "AMXINT8": "amx_int8", "AMXBF16": "amx_bf16"}
_MACOS_ARM = {"hw.optional.AdvSIMD": "asimd", "hw.optional.arm.FEAT_DotProd": "asimddp",
              "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_SVE": "sve"}


def cpu_features() -> dict:
    """The CPU's instruction-set features that decide which model variant is fastest (int8
    dot products: VNNI, AMX, ARM dotprod and i8mm; wide float SIMD), as ``{"source", "flags",
    "class"}``: from ``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS; elsewhere (Windows) the
    flags are unknown (``None``) and the class is the architecture alone."""
    arch = platform.machine().lower()
    flags, source = None, "unknown on this platform"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    if text:
        found = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                found |= set(value.split())
        flags, source = found, "/proc/cpuinfo"
    elif platform.system() == "Darwin":
        flags, source = _macos_flags(), "sysctl"
    wanted = ARM_FEATURES if arch in ("arm64", "aarch64") or arch.startswith("arm") else X86_FEATURES
    shown = None if flags is None else [name for name in wanted if name in flags]
    return {"source": source, "flags": shown, "class": isa_class(arch, shown)}


def _macos_flags() -> set[str] | None:
    """The features ``sysctl`` reports on macOS, under their Linux names; None if it fails."""
    import subprocess

    try:
        names = [*_MACOS_ARM] + ["machdep.cpu.features", "machdep.cpu.leaf7_features"]
        done = subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=5,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    found = set()
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key in _MACOS_ARM and value.strip() == "1":
            found.add(_MACOS_ARM[key])
        elif key.startswith("machdep.cpu"):
            found |= {_MACOS_X86[word] for word in value.split() if word in _MACOS_X86}
    return found


def isa_class(arch: str, flags: list[str] | None) -> str:
    """A short label such as "x86-64 AVX2, no VNNI", "x86-64 AVX-512 VNNI", "ARM dotprod"."""
    arm = arch in ("arm64", "aarch64") or arch.startswith("arm")
    if flags is None:
        return f"{'ARM' if arm else arch or 'unknown CPU'} (instruction-set features unknown)"
    has = set(flags)
    if arm:
        extras = [name for name, flag in (("dotprod", "asimddp"), ("i8mm", "i8mm"), ("SVE", "sve"))
                  if flag in has]
        return "ARM " + (", ".join(extras) if extras else "NEON, no dotprod")
    simd = "AVX-512" if "avx512f" in has else "AVX2" if "avx2" in has else "pre-AVX2"
    if "avx512_vnni" in has:
        label = f"x86-64 {simd} VNNI"
    elif "avx_vnni" in has:
        label = f"x86-64 {simd}, AVX-VNNI"
    else:
        label = f"x86-64 {simd}, no VNNI"
    extras = [name for name, flag in (("BF16", "avx512_bf16"), ("AMX", "amx_int8")) if flag in has]
    return label + "".join(f", {extra}" for extra in extras)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU, its instruction-set features, cores, OS, load and the versions of everything
    measured."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from tensorflow.config import threading

    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "versions": versions,
        "threads": {
            "tensorflow_intra_op": threading.get_intra_op_parallelism_threads() or "default (all cores)",
            "tensorflow_inter_op": threading.get_inter_op_parallelism_threads() or "default",
            "litert": "1 and all cores per row (num_threads)",
            "onnxruntime": "intra_op_num_threads 1 and all cores per row, inter_op 1",
        },
    }


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows)]


def _measured(target: dict) -> str:
    if target["measured"] is None:
        return "-"
    return f"{target['measured']:.3g}{target.get('unit', '')}"


def _header(results: dict) -> list[str]:
    m, inputs = results["machine"], results["inputs"]
    evaluation = inputs["evaluation"]
    return [
        "# pneumocnn benchmarks",
        "",
        f"`{results['command']}` ({results['mode']} mode), {results['started']}, "
        f"{results['wall_seconds']:.0f} s wall.",
        f"Machine: {m['cpu']} ({_features(m)}), {m['cores']} cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        f"Run: `{inputs['run']}`. Evaluation: {evaluation['n']} images ({evaluation.get('NORMAL', '?')} "
        f"NORMAL, {evaluation.get('PNEUMONIA', '?')} PNEUMONIA), {inputs['evaluation_source']}; "
        f"threshold {inputs['threshold']:.4f} (the model's).",
    ]


def _features(m: dict) -> str:
    """The CPU's class label and the flags it was read from (older results have neither)."""
    features = m.get("cpu_features")
    if not features:
        return "instruction-set features not recorded"
    flags = features.get("flags")
    shown = " ".join(flags) if flags else ("none of those looked for" if flags is not None else "")
    return f"{features['class']}" + (f"; {features['source']}: {shown}" if shown else "")


def _tie(q: dict) -> str:
    if "largest_tie" not in q:
        return "-"
    return f"{q['largest_tie']} ({q['largest_tie_pct']:.1f} %)" if q["largest_tie"] else "none"


def _variants(results: dict) -> list[str]:
    rows = []
    flags = results["machine"].get("cpu_features", {}).get("flags")
    for v in results["variants"]:
        q, lat, thr = (results[k].get(v["key"]) for k in ("quality", "latency", "throughput"))
        if v["error"]:
            rows.append([v["label"], v["runtime"], "-", "-", f"not run: {v['error']}", *["-"] * 12])
            continue
        size = v["size_bytes"] / 1e6 if v["size_bytes"] else None
        macs = v.get("multiply_adds")
        threads = v["threads"] if isinstance(v["threads"], int) else results["machine"]["cores"]
        share = share_of_peak(macs, lat["median_ms"], fma_peak(threads, flags))
        rows.append([v["label"], v["runtime"], str(v["threads"]), _f(size, 2), _f(q["accuracy"], 4),
                     _f(q["roc_auc"], 4), _f(q["sensitivity"], 4), _f(q["specificity"], 4),
                     _f(q["agreement"] * 100, 2), f"{q['max_abs_diff']:.2e}",
                     str(q.get("distinct_probabilities", "-")), _tie(q), _f(lat["median_ms"], 2),
                     _f(lat["p95_ms"], 2), _f(thr["images_per_s"], 0),
                     _f(macs / 1e6, 1) if macs else "-", _f(share * 100, 1) if share else "-"])
    calls = next(iter(results["latency"].values()), {}).get("n", 0)
    start, end = results["machine"]["load_average_at_start"], results.get("load_average_at_end")
    other = results.get("other_processes_cores")
    busy = "" if other is None else f" Other processes kept {other:.2f} cores busy on average during the run."
    return [
        "## Variants", "",
        "Accuracy figures at the model's threshold; agreement and max |diff| against the float Keras "
        "model's probabilities; distinct p: distinct probabilities over the images, largest tie: "
        "the most images sharing one probability (identical images counted once"
        f"{_duplicates(results)}). Latency: batch 1, each variant alone, the variants taking "
        "turns; throughput: batch 32. "
        f"{_limit_text(results)}", "",
        *_table(["variant", "runtime", "threads", "size MB", "accuracy", "ROC AUC", "sensitivity",
                 "specificity", "agreement %", "max abs diff", "distinct p", "largest tie",
                 "median ms", "p95 ms", "batch-32 img/s", "M MACs", "% FMA peak"], rows),
        "",
        f"Latency calls per variant: {calls} (after warm-up). Load average (1 min) at start "
        f"{_f(start and start[0], 2)}, at end {_f(end and end[0], 2)}.{busy}",
        *_defaults(results["variants"]),
    ]


def _limit_text(results: dict) -> str:
    """What the M MACs and % FMA peak columns are, with this CPU's peak."""
    peak = fma_peak(1, results["machine"].get("cpu_features", {}).get("flags"))
    how = (f"{peak['multiply_adds_per_s'] / 1e9:.1f} G multiply-adds/s per core: {peak['how']}"
           if peak else "unknown on this CPU")
    return ("M MACs: multiply-adds per image in the network the row runs (convolutions and dense "
            "layers; the .tflite files and the ONNX export take one input channel, Keras three); "
            f"% FMA peak: those multiply-adds at the median latency against the CPU's float32 FMA "
            f"peak at the row's thread count ({how}; benchmarks/limits.py says why).")


def _duplicates(results: dict) -> str:
    q = results["quality"].get("keras-compiled", {})
    extra = q.get("n", 0) - q.get("tie_images", q.get("n", 0))
    return f": {extra} duplicate(s) here" if extra else ""


def _defaults(variants: list[dict]) -> list[str]:
    """How the default rows chose their file."""
    chosen = [v for v in variants if v.get("default")]
    if not chosen:
        return []
    lines = ["", f"Default rows: `pneumocnn.load({chosen[0]['folder']!r}, threads=t)`, "
                 f"{chosen[0]['folder_reason']}; the choice made afresh in this run (its cache in "
                 "the run's temporary folder):"]
    lines += [f"- {v['threads']} thread(s): {v['chosen_file']}; {v['reason']}" for v in chosen]
    return lines


def _bare(results: dict) -> list[str]:
    latency = results["latency"]
    pairs = [(v, latency[v["key"] + ":bare"]) for v in results["variants"] if v["key"] + ":bare" in latency]
    if not pairs:
        return []
    rows = [[v["label"], str(v["threads"]), _f(b["median_ms"], 3), _f(latency[v["key"]]["median_ms"], 3),
             _f(latency[v["key"]]["median_ms"] - b["median_ms"], 3)] for v, b in pairs]
    return [
        "LiteRT bare interpreter call (fixed quantized input: `set_tensor`, `invoke`, `get_tensor`), "
        "timed in the same rounds; the difference is pneumocnn's overhead (input quantization, "
        "calibration, Python):", "",
        *_table(["variant", "threads", "bare median ms", "pneumocnn median ms", "overhead ms"], rows),
    ]


def _cold_start(cold: dict) -> list[str]:
    from benchmarks.coldstart import table

    return ["## Cold start and memory (fresh process, median of runs)", "", *table(cold)]


def _end_to_end(e2e: dict) -> list[str]:
    floor, first = e2e["floor"]["median_pass_s"], next(iter(e2e.values()))
    invoke = e2e.get("decode+invoke", {}).get("median_pass_s")
    rows = [[e["label"], _f(e["median_ms_per_image"], 1), _f(e["images_per_s"], 1),
             _f(e["median_pass_s"] / floor, 2) + "x",
             _f(e["median_pass_s"] / invoke, 2) + "x" if invoke else "-"] for e in e2e.values()]
    lines = [f"## End to end on full-size X-rays ({first['files']} files, {first['passes']} pass(es); "
             "median)", "",
             *_table(["path", "median ms per image", "images/s", "time vs decode floor",
                      "time vs decode + invoke"], rows)]
    if "folder" in e2e:
        ratio = e2e["folder"]["vs_single_calls"]
        why = ("decoding on a thread per core overlaps inference" if ratio > 1.05 else
               "no gain here: with few files, or cores busy with other work, there is little to overlap")
        lines += ["", f"The whole list of files in one `predict` call: {e2e['folder']['images_per_s']:.1f} "
                      f"images/s, {ratio:.2f}x the single-file calls' ({why})."]
    return lines


def _pipeline(pipe: dict) -> list[str]:
    floor = pipe["pipelines"]["in-memory"]["epoch_s"]
    floor_cpu = pipe["pipelines"]["in-memory"]["cpu_s"]
    rows = [[p["label"], "not run: " + p["error"], "-", "-", "-", "-"] if "error" in p else
            [p["label"], _f(p["epoch_s"], 1), _f(p["images_per_s"], 0), _f(p["epoch_s"] / floor, 2) + "x",
             _f(p["cpu_s"], 1), _f(p["cpu_s"] / floor_cpu, 2) + "x"]
            for p in pipe["pipelines"].values()]
    return [f"## Training input pipeline ({pipe['images']} images, batch {pipe['batch_size']}; median of "
            f"{pipe['repeats']} epoch(s) each, taking turns)",
            *(["", f"Images: {pipe['source']}."] if pipe.get("source") else []),
            "", *_table(["pipeline", "epoch s", "images/s", "time vs floor", "CPU s", "CPU vs floor"], rows),
            "",
            f"pneumocnn's one-off decode into its pixel cache: {pipe['decode_once_s']:.1f} s (first run "
            "only; later runs and resumes read the cache)."]


def _targets(targets: list[dict]) -> list[str]:
    rows = [[t["target"], _measured(t), t["goal"], t["result"], t.get("context") or "-"] for t in targets]
    return ["## Targets", "", *_table(["target", "measured", "goal", "result", "context (same run)"], rows)]


def markdown(results: dict) -> str:
    """The whole report as markdown: one section per measurement, then targets and notes."""
    sections = [_header(results), _variants(results), _bare(results)]
    for key, section in (("cold_start", _cold_start), ("end_to_end", _end_to_end),
                         ("pipeline", _pipeline)):
        if results.get(key):
            sections.append(section(results[key]))
    sections.append(_targets(results["targets"]))
    if results.get("notes"):
        sections.append(["## Notes", "", *(f"- {n}" for n in results["notes"])])
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """One row per variant, fastest at the top: batch-1 latency (median, whisker to p95; log
    scale), with the variant's accuracy printed at the end of its row (accuracies often tie,
    and points on one accuracy line would hide each other). The title says what the accuracy
    was measured on, and whether those X-rays were held out from the model's training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"Keras": "s", "LiteRT": "o", "ONNX Runtime": "D"}
    shown = sorted((v for v in results["variants"] if not v["error"] and v["key"] in results["latency"]),
                   key=lambda v: results["latency"][v["key"]]["median_ms"])
    figure, axes = plt.subplots(figsize=(10, 0.9 + 0.36 * max(len(shown), 1)))
    slowest = max((results["latency"][v["key"]]["p95_ms"] for v in shown), default=1.0)
    for row, v in enumerate(shown):
        latency, quality = results["latency"][v["key"]], results["quality"][v["key"]]
        threads = f"{v['threads']} thread(s)" if isinstance(v["threads"], int) else "TF threads"
        axes.errorbar(latency["median_ms"], row, xerr=[[0], [latency["p95_ms"] - latency["median_ms"]]],
                      fmt=markers[v["runtime"]], color="tab:blue", capsize=3, markersize=6)
        axes.annotate(f"{latency['median_ms']:.2f} ms, accuracy {quality['accuracy']:.4f}",
                      (slowest * 1.15, row), va="center", fontsize=8)
        v_label = f"{v['label']}, {threads}"
        axes.text(-0.01, row, v_label, transform=axes.get_yaxis_transform(), ha="right",
                  va="center", fontsize=8)
    axes.set_yticks([])
    axes.set_ylim(len(shown) - 0.5, -0.5)
    axes.set_xscale("log")
    axes.set_xlim(right=slowest * 6)
    axes.set_xlabel("batch-1 latency, ms (median; whisker to p95; log scale)")
    axes.set_title(_accuracy_source(results["inputs"]), fontsize=9)
    axes.grid(True, axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _accuracy_source(inputs: dict) -> str:
    """What the plotted accuracy was measured on, in words."""
    n = inputs["evaluation"]["n"]
    if inputs.get("shipped_xrays"):
        return (f"pneumocnn variants; accuracy on the {n} X-rays of tests/data, which are training "
                "images of the model (not held out: no claim about new patients)")
    source = inputs.get("evaluation_source")
    return f"pneumocnn variants; accuracy on {n} X-rays" + (f": {source}" if source else "")


def write(results: dict, out: Path) -> str:
    """Write ``results.md``, ``results.json`` and ``latency_vs_accuracy.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, out / "latency_vs_accuracy.png")
    return text


def write_pair(out: Path | None, name: str, text: str, result: dict) -> None:
    """Write ``text`` to ``out/NAME.md`` and ``result`` to ``out/NAME.json`` (nothing when
    ``out`` is None)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
