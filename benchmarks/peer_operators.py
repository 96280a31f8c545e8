"""Where ONNX Runtime's time goes, node by node, on the peer rows' ONNX files.

The full benchmark and ``python -m benchmarks.latency --peers RUN`` time ONNX Runtime float32
and static int8 made from a run's ``model.keras``
(:func:`benchmarks.variants.onnx_variants`); this profiles the same two files with ONNX
Runtime's own profiler (``SessionOptions.enable_profiling``), on the shipped X-rays, so that its
per-node times can be set beside LiteRT's per-operator ones (:mod:`benchmarks.operators`).

``python -m benchmarks.peer_operators [--run benchmarks/bundled-run] [--threads 1] [--runs 300]
[--out DIR]`` prints the table and, with ``--out``, writes ``DIR/peer_operators.{md,json}``.
Needs the training extra (TensorFlow, for the ONNX export) and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def profile_nodes(path: Path, inputs: np.ndarray, threads: int, runs: int) -> list[dict]:
    """Median ms per node of ``runs`` runs of the ONNX file at ``path`` (the first fifth left
    out as warm-up), each run on the next image of ``inputs`` (float32 model inputs); nodes in
    the order they ran, with their operator type and output shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / path.stem)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for i in range(runs):
            session.run(None, {name: inputs[i % len(inputs)][np.newaxis]})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = nodes.setdefault(event["name"].removesuffix("_kernel_time"), {
            "op": event["args"].get("op_name"),
            "output": "x".join(str(n) for shape in event["args"].get("output_type_shape", [])
                               for dims in shape.values() for n in dims),
            "microseconds": []})
        node["microseconds"].append(event["dur"])
    return [{"node": key, "op": node["op"], "output": node["output"],
             "median_ms": float(np.median(node["microseconds"][runs // 5:])) / 1000}
            for key, node in nodes.items()]


def node_table(result: dict) -> str:
    """One markdown table per file: node, output shape, median ms; and their sum."""
    blocks = []
    for name, nodes in result["files"].items():
        lines = [f"**{name}**", "", "| node | output | median ms |", "|---|---|---|"]
        lines += [f"| {n['op']} | {n['output']} | {n['median_ms']:.3f} |" for n in nodes]
        lines.append(f"| sum of the nodes | | {sum(n['median_ms'] for n in nodes):.3f} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> dict:
    """Profile the peer rows' ONNX files (see the module's docstring); print the table."""
    from benchmarks import BUNDLED_RUN, TEST_DATA, report
    from benchmarks.variants import load_keras, onnx_variants
    from pneumocnn.core.labelled_data import index_folder
    from pneumocnn.core.preprocessing import load_pixels, to_model_inputs

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_operators",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=BUNDLED_RUN)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    keras_model = load_keras(args.run)
    spec = keras_model.description.preprocessing
    pixels = np.stack([load_pixels(image, spec) for image in index_folder(TEST_DATA / "xrays").paths])
    inputs = to_model_inputs(pixels, spec)[..., :1]  # the one-channel network the files hold
    with tempfile.TemporaryDirectory() as work:
        made = onnx_variants(keras_model, Path(work), pixels)
        failed = [f"{v.label}: {v.error}" for v in made if v.error]
        files = {v.label: Path(work) / f"model-{v.quantization}.onnx" for v in made if not v.error}
        result = {"command": "python -m benchmarks.peer_operators " + " ".join(argv or []),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "cpu": report.cpu_name(), "cpu_features": report.cpu_features(),
                  "load_average_at_start": report.load_average(), "threads": args.threads,
                  "runs": args.runs, "failed": failed,
                  "files": {label: profile_nodes(path, inputs, args.threads, args.runs)
                            for label, path in files.items()}}
    features = result["cpu_features"]
    text = (f"{node_table(result)}\n\n{args.runs} runs each, {args.threads} thread(s), ONNX "
            f"Runtime's profiler (median of each node's kernel time, the first fifth of the runs "
            f"left out); {result['cpu']} ({features['class']})."
            + "".join(f"\nNot profiled: {line}" for line in failed) + "\n")
    print(text)
    report.write_pair(args.out, "peer_operators", text, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
