"""The rows of the benchmark: one float Keras model, its TFLite files and an ONNX export.

Every variant's ``run`` takes decoded, resized uint8 pixels ``(N, H, W)`` and returns
calibrated positive-class probabilities (the model file's temperature applied, as pneumocnn
does), so every timed call does the same job from the same inputs: scale (and, for integer
models, quantize), run, calibrate. TFLite variants go through pneumocnn's own LiteRT backend
(``pneumocnn.load(path, threads=t).probabilities``, the path ``predict`` takes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pneumocnn
from pneumocnn.core.modelfile import ModelDescription, positive_probability, read_keras_description
from pneumocnn.core.preprocessing import to_model_inputs
from pneumocnn.training.export import QUANTIZATIONS

TF_THREADS = "all (TF default)"


@dataclass
class Variant:
    """One way to run the model; ``run`` is None (and ``error`` says why) when unavailable."""

    key: str
    label: str
    runtime: str
    quantization: str
    threads: int | str
    size_bytes: int | None
    run: Callable[[np.ndarray], np.ndarray] | None
    error: str | None = None
    bare: Callable[[np.ndarray], object] | None = None  # LiteRT: the interpreter call alone

    def summary(self) -> dict:
        """The variant's fixed facts, for the JSON report."""
        return {"key": self.key, "label": self.label, "runtime": self.runtime,
                "quantization": self.quantization, "threads": self.threads,
                "size_bytes": self.size_bytes, "error": self.error}


@dataclass
class KerasModel:
    """The run's float Keras model and the description stored with it."""

    model: object
    description: ModelDescription
    path: Path


def load_keras(run_dir: Path) -> KerasModel:
    """Load ``model.keras`` (safe mode) and build it with one call."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    path = run_dir / "model.keras"
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    description = read_keras_description(path)
    model(np.zeros((1, *description.preprocessing.input_shape), np.float32), training=False)
    return KerasModel(model, description, path)


def build_variants(keras_model: KerasModel, run_dir: Path, work_dir: Path) -> list[Variant]:
    """Every variant, in table order; ONNX export files go to ``work_dir``."""
    import tensorflow as tf

    model, calibrate = keras_model.model, keras_model.description.calibrate
    spec = keras_model.description.preprocessing
    shape = spec.input_shape
    size = keras_model.path.stat().st_size
    compiled = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    variants = [
        Variant("keras-predict", "Keras model.predict", "Keras", "float32", TF_THREADS, size,
                lambda px: calibrate(positive_probability(
                    model.predict(to_model_inputs(px, spec), verbose=0)))),
        Variant("keras-compiled", "Keras compiled call", "Keras", "float32", TF_THREADS, size,
                lambda px: calibrate(positive_probability(compiled(to_model_inputs(px, spec)).numpy()))),
    ]
    for quantization in QUANTIZATIONS:
        path = run_dir / f"model-{quantization}.tflite"
        for threads in thread_counts():
            loaded = pneumocnn.load(path, threads=threads)
            variants.append(Variant(f"litert-{quantization}-{threads}t", f"LiteRT {quantization}",
                                    "LiteRT", quantization, threads, path.stat().st_size,
                                    loaded.probabilities, bare=_bare_invoke(path, threads)))
    return variants + onnx_variants(keras_model, work_dir)


def onnx_variants(keras_model: KerasModel, work_dir: Path) -> list[Variant]:
    """ONNX Runtime float32 on a Keras ONNX export (tf2onnx underneath), or one row saying why
    it could not be made."""
    path = work_dir / "model-float32.onnx"
    try:
        import onnxruntime as ort

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras_model.model.export(str(path), format="onnx", verbose=False)
    except Exception as error:  # ImportError, or any failure inside the exporter
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return [Variant("onnxruntime-float32", "ONNX Runtime float32", "ONNX Runtime", "float32",
                        "-", None, None, error=reason)]
    calibrate, spec = keras_model.description.calibrate, keras_model.description.preprocessing
    variants = []
    for threads in thread_counts():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(pixels, session=session, name=name):
            outputs = session.run(None, {name: to_model_inputs(pixels, spec)})[0]
            return calibrate(positive_probability(outputs))

        variants.append(Variant(f"onnxruntime-float32-{threads}t", "ONNX Runtime float32",
                                "ONNX Runtime", "float32", threads, path.stat().st_size, run))
    return variants


def _bare_invoke(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    """``set_tensor``, ``invoke`` and ``get_tensor`` with a fixed, already quantized input, on a
    LiteRT interpreter of its own over the same file and threads: what any LiteRT caller pays,
    to show pneumocnn's overhead over it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=path.read_bytes(), num_threads=threads)
    interpreter.allocate_tensors()
    tensor, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    fixed = np.zeros(tensor["shape"], tensor["dtype"])

    def call(_inputs):
        interpreter.set_tensor(tensor["index"], fixed)
        interpreter.invoke()
        return interpreter.get_tensor(output["index"])

    return call


def thread_counts() -> list[int]:
    """1 thread and all cores (one entry on a single-core machine)."""
    return sorted({1, os.cpu_count() or 1})
