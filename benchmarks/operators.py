"""Where the time of a ``.tflite`` file goes, operator by operator, and what each operator's
arithmetic could take at most.

LiteRT's Python interpreter has no per-operator profiler, so each operator that works on the
image (not those that only unpack constant weights, which run once at load) is cut out of the
file into a model of its own, with the same tensors, weights and quantization, and timed alone
on LiteRT (XNNPACK, as ``predict`` runs it): the operators of every file given, in the same
interleaved rounds. The whole file is timed in the same rounds, so the table says how much of
it the operators alone explain. Each convolution's multiply-adds give its share of the CPU's
float32 FMA peak (see :mod:`benchmarks.limits`).

``python -m benchmarks.operators [FILE ...] [--threads 1] [--rounds 200] [--out DIR]``
(default: the bundled models) prints the table and, with ``--out``, writes
``DIR/operators.{md,json}``. Needs LiteRT only.
"""

from __future__ import annotations

import argparse
import copy
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def operators(content: bytes) -> list[dict]:
    """The operators of a ``.tflite`` file's graph that work on the image, in order: index,
    name, input and output shapes and types, and multiply-adds (convolutions and fully
    connected layers; 0 for the others)."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tree = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = tree.subgraphs[0]
    found = []
    for index, op in enumerate(graph.operators):
        if not any(_is_variable(tree, graph, t) for t in op.inputs if t >= 0):
            continue  # unpacks constant weights: done once, at load
        code = tree.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        data = graph.tensors[op.inputs[0]]
        out = graph.tensors[op.outputs[0]]
        found.append({"index": index, "op": name,
                      "input": [int(n) for n in data.shape], "output": [int(n) for n in out.shape],
                      "types": f"{types[data.type]} -> {types[out.type]}",
                      "multiply_adds": _multiply_adds(name, graph, op)})
    return found


def _is_variable(tree, graph, tensor: int) -> bool:
    """Whether a tensor is computed while the graph runs (not a constant in a buffer)."""
    buffer = tree.buffers[graph.tensors[tensor].buffer]
    return buffer.data is None or len(buffer.data) == 0


def _multiply_adds(name: str, graph, op) -> int:
    out = [int(n) for n in graph.tensors[op.outputs[0]].shape]
    if name == "CONV_2D":  # filter (out, h, w, in)
        _, height, width, depth = (int(n) for n in graph.tensors[op.inputs[1]].shape)
        return int(np.prod(out)) * height * width * depth
    if name == "DEPTHWISE_CONV_2D":  # filter (1, h, w, out)
        _, height, width, _ = (int(n) for n in graph.tensors[op.inputs[1]].shape)
        return int(np.prod(out)) * height * width
    if name == "FULLY_CONNECTED":  # weights (out, in)
        return int(np.prod(out)) * int(graph.tensors[op.inputs[1]].shape[-1])
    return 0


def single_operator(content: bytes, index: int) -> bytes:
    """A ``.tflite`` model of operator ``index`` of the file alone: its variable inputs are the
    model's inputs, its outputs the model's outputs, its constants copied with their buffers."""
    import flatbuffers

    schema = _schema()
    tree = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph, op = tree.subgraphs[0], copy.copy(tree.subgraphs[0].operators[index])
    model = schema.ModelT()
    model.version = tree.version
    model.operatorCodes = [tree.operatorCodes[op.opcodeIndex]]
    model.buffers = [schema.BufferT()]  # buffer 0: no data, as converters write it
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, renumbered = [], [], {}
    unpacked = _unpacked_weights(tree, graph)
    for tensor in [t for t in op.inputs if t >= 0] + list(op.outputs):
        if tensor in renumbered:
            continue
        copied = copy.copy(graph.tensors[tensor])
        if tensor in unpacked:  # float16 weights: as the interpreter unpacks them at load
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(unpacked[tensor], np.uint8)
            model.buffers.append(buffer)
            copied.buffer = len(model.buffers) - 1
        elif _is_variable(tree, graph, tensor):
            copied.buffer = 0
            if tensor in op.inputs:
                subgraph.inputs.append(len(subgraph.tensors))
        else:
            model.buffers.append(tree.buffers[copied.buffer])
            copied.buffer = len(model.buffers) - 1
        renumbered[tensor] = len(subgraph.tensors)
        subgraph.tensors.append(copied)
    op.opcodeIndex = 0
    op.inputs = [renumbered[t] if t >= 0 else -1 for t in op.inputs]
    op.outputs = [renumbered[t] for t in op.outputs]
    subgraph.outputs = list(op.outputs)
    subgraph.operators = [op]
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(len(content))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _unpacked_weights(tree, graph) -> dict[int, bytes]:
    """The float32 bytes of every tensor a ``DEQUANTIZE`` of constant float16 weights makes."""
    schema = _schema()
    found = {}
    for op in graph.operators:
        code = tree.operatorCodes[op.opcodeIndex]
        source = graph.tensors[op.inputs[0]]
        if (max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE
                and source.type == schema.TensorType.FLOAT16
                and not _is_variable(tree, graph, op.inputs[0])):
            data = np.asarray(tree.buffers[source.buffer].data, np.uint8).tobytes()
            found[op.outputs[0]] = np.frombuffer(data, np.float16).astype(np.float32).tobytes()
    return found


def _caller(content: bytes, threads: int, seed: int):
    """An ``invoke`` of a model on fixed random inputs of its input types."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    for tensor in interpreter.get_input_details():
        dtype = np.dtype(tensor["dtype"])
        values = (rng.random(tensor["shape"]).astype(dtype) if dtype.kind == "f" else
                  rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, tensor["shape"], dtype))
        interpreter.set_tensor(tensor["index"], values)
    return interpreter.invoke


def profile(files: list[Path], threads: int, rounds: int, warmup: int) -> dict:
    """Median ms of each operator of each file alone and of each whole file, interleaved."""
    from benchmarks.latency import interleaved, summarize

    calls, found = {}, {}
    for path in files:
        content = path.read_bytes()
        found[str(path)] = operators(content)
        calls[f"{path}:whole"] = _caller(content, threads, 0)
        for op in found[str(path)]:
            calls[f"{path}:{op['index']}"] = _caller(single_operator(content, op["index"]), threads, 0)
    timed = {key: summarize(seconds) for key, seconds in interleaved(calls, rounds, warmup).items()}
    for path, ops in found.items():
        for op in ops:
            op.update({k: timed[f"{path}:{op['index']}"][k] for k in ("median_ms", "min_ms")})
    return {"files": {path: {"operators": ops, "whole_median_ms": timed[f"{path}:whole"]["median_ms"]}
                      for path, ops in found.items()}, "threads": threads, "rounds": rounds}


def operator_table(result: dict, peak: dict | None) -> str:
    """One markdown table: an operator per row, a median-ms column (and % FMA peak) per file."""
    from benchmarks.limits import share_of_peak

    files = list(result["files"])
    short = [Path(f).stem for f in files]
    lines = ["| op | output | M MACs | " + " | ".join(f"{s} ms | {s} % peak" for s in short) + " |",
             "|---|---|---|" + "---|---|" * len(files)]
    rows: dict[tuple, dict] = {}
    for path in files:
        for op in result["files"][path]["operators"]:
            key = (op["op"], tuple(op["output"]))
            rows.setdefault(key, {"macs": op["multiply_adds"]})[path] = op["median_ms"]
    for (name, shape), cells in rows.items():
        parts = []
        for path in files:
            ms = cells.get(path)
            share = share_of_peak(cells["macs"], ms, peak) if ms else None
            parts += [f"{ms:.3f}" if ms is not None else "-",
                      f"{share * 100:.0f}" if share else "-"]
        lines.append(f"| {name} | {'x'.join(map(str, shape))} | "
                     f"{cells['macs'] / 1e6:.1f} | " + " | ".join(parts) + " |")
    totals = []
    for path in files:
        data = result["files"][path]
        ops = sum(op["median_ms"] for op in data["operators"])
        totals += [f"{ops:.3f} (whole file {data['whole_median_ms']:.3f})", ""]
    macs = sum(op["multiply_adds"] for op in result["files"][files[0]]["operators"])
    lines.append(f"| sum of the operators | | {macs / 1e6:.1f} | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Profile the files given (see the module's docstring); print the table."""
    from benchmarks import BUNDLED_MODELS, report
    from benchmarks.limits import fma_peak

    parser = argparse.ArgumentParser(prog="python -m benchmarks.operators",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        default=sorted(BUNDLED_MODELS.glob("*.tflite")))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    features = report.cpu_features()
    peak = fma_peak(args.threads, features["flags"])
    result = {"command": "python -m benchmarks.operators " + " ".join(argv or []),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpu": report.cpu_name(), "cpu_features": features, "fma_peak": peak,
              "load_average_at_start": report.load_average(),
              **profile(args.files, args.threads, args.rounds, args.warmup)}
    text = (f"{operator_table(result, peak)}\n\n{args.rounds} interleaved rounds, {args.threads} "
            f"thread(s), each operator alone on LiteRT (XNNPACK); {result['cpu']} "
            f"({features['class']}); % peak: of {peak['how'] if peak else 'an unknown peak'}.\n")
    print(text)
    report.write_pair(args.out, "operators", text, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
