"""The rows of the benchmark: one float Keras model, its TFLite files, and its ONNX export run
by ONNX Runtime in float32 and statically quantized to int8 by ONNX Runtime's own tools.

Every variant's ``run`` takes decoded, resized uint8 pixels ``(N, H, W)`` and returns
calibrated positive-class probabilities (the model file's temperature applied, as pneumocnn
does), so every timed call does the same job from the same inputs: scale (and, for integer
models, quantize), run, calibrate. TFLite variants go through pneumocnn's own LiteRT backend
(``pneumocnn.load(path, threads=t).probabilities``, the path ``predict`` takes).

The *default* rows are what a user gets without naming a file: ``pneumocnn.load(folder,
threads=t)`` on a folder of variants, which times them here and loads the fastest (see
``pneumocnn.runtime.variants``). The folder is the bundled models' (``pneumocnn/models``) when
each of its files is byte-identical to one of the run's, else the run folder itself; the choice
is remembered in the benchmark's temporary folder, so it is made afresh in every benchmark run
and never written into the user's cache.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import pneumocnn
from benchmarks import BUNDLED_MODELS, shown
from benchmarks.limits import multiply_adds
from pneumocnn.core.modelfile import ModelDescription, positive_probability, read_keras_description
from pneumocnn.core.preprocessing import to_model_inputs
from pneumocnn.training.export import QUANTIZATIONS, one_channel

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
    details: dict = field(default_factory=dict)  # the default rows: which file, and why
    multiply_adds: int | None = None  # per image, in the network this row runs

    def summary(self) -> dict:
        """The variant's fixed facts, for the JSON report."""
        return {"key": self.key, "label": self.label, "runtime": self.runtime,
                "quantization": self.quantization, "threads": self.threads,
                "size_bytes": self.size_bytes, "error": self.error,
                "multiply_adds": self.multiply_adds, **self.details}


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


@dataclass
class DefaultLoad:
    """``pneumocnn.load(folder, threads=t)`` for each thread count: the default rows."""

    folder: Path
    why: str  # why this folder, for the report
    models: dict[int, pneumocnn.Model]

    @property
    def all_cores(self) -> pneumocnn.Model:
        """The model loaded with all cores (``pneumocnn.load``'s own default)."""
        return self.models[max(self.models)]


def default_folder(run_dir: Path) -> tuple[Path, str]:
    """The bundled models' folder when every ``.tflite`` file in it is byte-identical to one of
    the run folder's, else the run folder; and why, for the report."""
    bundled = sorted(BUNDLED_MODELS.glob("*.tflite"))
    ours = {path.read_bytes() for path in run_dir.glob("*.tflite")}
    foreign = [path.name for path in bundled if path.read_bytes() not in ours]
    if bundled and not foreign:
        names = ", ".join(path.name for path in bundled)
        return BUNDLED_MODELS, (f"the bundled models ({shown(BUNDLED_MODELS)}: {names}), each "
                                "byte-identical to a file of the run")
    why = (f"{', '.join(foreign)} in {shown(BUNDLED_MODELS)} not byte-identical to any file of "
           "the run" if foreign else f"no .tflite file in {shown(BUNDLED_MODELS)}")
    return run_dir, f"the run folder's .tflite files ({why})"


@contextmanager
def variant_cache(folder: Path) -> Iterator[None]:
    """``PNEUMOCNN_CACHE_DIR`` set to ``folder`` for the duration (then restored)."""
    before = os.environ.get("PNEUMOCNN_CACHE_DIR")
    os.environ["PNEUMOCNN_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PNEUMOCNN_CACHE_DIR", None)
        else:
            os.environ["PNEUMOCNN_CACHE_DIR"] = before


def load_default(run_dir: Path, work_dir: Path) -> DefaultLoad:
    """``pneumocnn.load(folder, threads=t)`` for each thread count, its choice made afresh (the
    cache is a new folder in ``work_dir``)."""
    folder, why = default_folder(run_dir)
    with variant_cache(work_dir / "variant-cache"):
        models = {threads: pneumocnn.load(folder, threads=threads) for threads in thread_counts()}
    return DefaultLoad(folder, why, models)


def default_variants(default: DefaultLoad, multiply_adds: int | None = None) -> list[Variant]:
    """One row per thread count for the model ``pneumocnn.load(folder)`` chose (whose network
    does ``multiply_adds`` per image)."""
    variants = []
    for threads, model in default.models.items():
        choice, path = model.variant, Path(model.path)
        details = {"default": True, "folder": shown(default.folder), "folder_reason": default.why,
                   "chosen_file": shown(path), "candidates": list(choice.candidates),
                   "reason": choice.reason, "timings_ms": dict(choice.timings_ms)}
        variants.append(Variant(f"default-{threads}t", f"pneumocnn.load() default (chose {choice.variant})",
                                "LiteRT", choice.variant, threads, path.stat().st_size,
                                model.probabilities, bare=_bare_invoke(path, threads), details=details,
                                multiply_adds=multiply_adds))
    return variants


def build_variants(keras_model: KerasModel, run_dir: Path, work_dir: Path,
                   default: DefaultLoad | None = None,
                   calibration: np.ndarray | None = None) -> list[Variant]:
    """Every variant, in table order (the default rows after the LiteRT files' own); ONNX
    export files go to ``work_dir``; ``calibration`` (uint8 pixels of training X-rays) calibrates
    ONNX Runtime's int8 quantization (no ONNX Runtime rows without it)."""
    import tensorflow as tf

    model, calibrate = keras_model.model, keras_model.description.calibrate
    spec = keras_model.description.preprocessing
    shape = spec.input_shape
    size = keras_model.path.stat().st_size
    compiled = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    macs = multiply_adds(model)
    variants = [
        Variant("keras-predict", "Keras model.predict", "Keras", "float32", TF_THREADS, size,
                lambda px: calibrate(positive_probability(
                    model.predict(to_model_inputs(px, spec), verbose=0))), multiply_adds=macs),
        Variant("keras-compiled", "Keras compiled call", "Keras", "float32", TF_THREADS, size,
                lambda px: calibrate(positive_probability(compiled(to_model_inputs(px, spec)).numpy())),
                multiply_adds=macs),
    ]
    one = multiply_adds(one_channel(model, keras_model.description)[0])  # what .tflite files hold
    for quantization in QUANTIZATIONS:
        path = run_dir / f"model-{quantization}.tflite"
        for threads in thread_counts():
            loaded = pneumocnn.load(path, threads=threads)
            channels = loaded.description.preprocessing.channels
            variants.append(Variant(f"litert-{quantization}-{threads}t", f"LiteRT {quantization}",
                                    "LiteRT", quantization, threads, path.stat().st_size,
                                    loaded.probabilities, bare=_bare_invoke(path, threads),
                                    multiply_adds=one if channels == 1 else macs))
    if default is not None:
        variants += default_variants(default, one)
    if calibration is None:
        return variants
    return variants + onnx_variants(keras_model, work_dir, calibration)


def onnx_variants(keras_model: KerasModel, work_dir: Path, calibration: np.ndarray) -> list[Variant]:
    """ONNX Runtime rows, as a user choosing a runtime would compare: float32 on a Keras ONNX
    export (tf2onnx underneath) and int8 statically quantized by ONNX Runtime's own tools
    (:func:`quantize_onnx`, calibrated on ``calibration``, uint8 pixels of real X-rays the
    model was trained on). The export is of the model with one input channel, the network the
    LiteRT files hold (see ``pneumocnn.training.export.one_channel``), so that every runtime
    does the same arithmetic. A row that cannot be made stays, saying why."""
    model, description = one_channel(keras_model.model, keras_model.description)
    spec, calibrate = description.preprocessing, description.calibrate
    model(np.zeros((1, *spec.input_shape), np.float32), training=False)  # Keras exports called models
    float_path = work_dir / "model-float32.onnx"
    try:
        import onnxruntime as ort

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(float_path), format="onnx", verbose=False)
    except Exception as error:  # ImportError, or any failure inside the exporter
        return [_failed("float32", error), _failed("int8", error)]
    paths = {"float32": float_path}
    try:
        paths["int8"] = quantize_onnx(float_path, to_model_inputs(calibration, spec), work_dir)
    except Exception as error:  # any failure inside ONNX Runtime's quantization tools
        failed = _failed("int8", error)
    else:
        failed = None
    macs = multiply_adds(model)
    variants = []
    for quantization, path in paths.items():
        for threads in thread_counts():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name

            def run(pixels, session=session, name=name):
                outputs = session.run(None, {name: to_model_inputs(pixels, spec)})[0]
                return calibrate(positive_probability(outputs))

            variants.append(Variant(f"onnxruntime-{quantization}-{threads}t", ONNX_LABELS[quantization],
                                    "ONNX Runtime", quantization, threads, path.stat().st_size, run,
                                    multiply_adds=macs))
    return variants + ([failed] if failed else [])


ONNX_LABELS = {"float32": "ONNX Runtime float32", "int8": "ONNX Runtime int8 (static QDQ)"}


def _failed(quantization: str, error: Exception) -> Variant:
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return Variant(f"onnxruntime-{quantization}", ONNX_LABELS[quantization], "ONNX Runtime",
                   quantization, "-", None, None, error=reason)


def quantize_onnx(float_path: Path, calibration: np.ndarray, work_dir: Path) -> Path:
    """ONNX Runtime's static int8 quantization of the float32 ONNX file, as its documentation
    describes it: the graph prepared by ``quant_pre_process`` (ONNX shape inference and graph
    optimisation; the symbolic shape inference, which needs sympy, is for dynamic shapes),
    then ``quantize_static`` in QDQ format, uint8 activations and int8 weights per channel,
    activation ranges from MinMax calibration on ``calibration`` (float32 model inputs), and
    weights of 7 bits (``reduce_range``) on a CPU without VNNI, where ONNX Runtime's u8s8 kernels
    can saturate otherwise. Returns the int8 file's path."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from benchmarks.report import cpu_features

    prepared, out = work_dir / "model-float32-prepared.onnx", work_dir / "model-int8.onnx"
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # shapes are static
    name = onnx.load(str(prepared)).graph.input[0].name

    class XRays(CalibrationDataReader):
        def __init__(self) -> None:
            self._images = iter(calibration)

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {name: image[np.newaxis]}

    flags = cpu_features()["flags"] or []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(prepared), str(out), XRays(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True,
                        reduce_range=not {"avx512_vnni", "avx_vnni"} & set(flags))
    return out


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
