"""pneumocnn's benchmark suite: ``python -m benchmarks [--quick]`` from the repository root.

Measures the quantized TFLite models against the float Keras model and against ONNX Runtime
in one process run (accuracy, latency, throughput), plus cold start, end-to-end decoding and
the training input pipeline in the same run, and writes ``benchmarks/results/``. See README.md.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
BUNDLED_RUN = REPO / "benchmarks" / "bundled-run"  # the bundled model's run, shipped
TRAINED_RUN = REPO / "runs" / "pneumocnn"  # where `pneumocnn train` writes by default
BUNDLED_MODELS = REPO / "pneumocnn" / "models"
TEST_DATA = REPO / "tests" / "data"  # 24 + 24 real X-rays and 3 full-size files, shipped


def shown(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it, else as given: what results
    and reports name, so that they name no one's checkout."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)
