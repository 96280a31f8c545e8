"""pneumocnn's benchmark suite: ``python -m benchmarks [--quick]`` from the repository root.

Measures the quantized TFLite models against the float Keras model and against ONNX Runtime
in one process run (accuracy, latency, throughput), plus cold start, end-to-end decoding and
the training input pipeline in the same run, and writes ``benchmarks/results/``. See README.md.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
