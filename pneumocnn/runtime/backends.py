"""Model backends: run a batch of preprocessed images, return raw positive-class probabilities.

``TFLiteBackend`` runs ``.tflite`` files on LiteRT (``ai-edge-litert``), falling back to
``tflite_runtime`` or TensorFlow's interpreter when LiteRT is not installed. ``KerasBackend``
runs ``.keras`` files and needs TensorFlow. Both are safe to call from several threads.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from pneumocnn.core.errors import MissingDependencyError, ModelFileError
from pneumocnn.core.modelfile import (
    ModelDescription,
    positive_probability,
    read_from_tflite,
    read_keras_description,
)
from pneumocnn.core.preprocessing import Preprocessing, to_model_input


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            "running .tflite models needs the LiteRT runtime: pip install ai-edge-litert"
        ) from None
    return tf.lite.Interpreter


class TFLiteBackend:
    """A LiteRT interpreter over one ``.tflite`` model, serialised by a lock.

    The model is checked against its description and run once on zeros at load, so that a
    damaged or inconsistent file fails in :func:`~pneumocnn.load`, not in the middle of a batch.
    In a child made by ``fork`` the interpreter is opened afresh on first use: the parent's
    lock may have been held, and its interpreter threads do not exist, in the child.
    """

    def __init__(self, content: bytes, description: ModelDescription, source: str,
                 threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._content = content
        self._lock = threading.Lock()
        self._pixel_tables: dict[float, np.ndarray] = {}  # uint8 pixel -> input tensor value
        try:
            self._interpreter = self._open()
            inputs = self._interpreter.get_input_details()  # a damaged tensor name fails here
            outputs = self._interpreter.get_output_details()
        except (RuntimeError, ValueError) as error:
            raise ModelFileError(source, f"the TFLite runtime cannot load this model ({error})") from error
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(source, f"expected one input and one output tensor, found "
                                         f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        _check_tensors(source, description, self._input, self._output)
        try:
            self.run(np.zeros((1, *description.preprocessing.input_shape), np.float32))
        except RuntimeError as error:
            raise ModelFileError(source, f"the TFLite runtime cannot run this model ({error})") from error
        _BACKENDS.add(self)

    def _open(self):
        interpreter = _interpreter_class()(model_content=self._content, num_threads=self.threads)
        interpreter.allocate_tensors()
        return interpreter

    def _after_fork(self) -> None:
        _ORPHANS.append(self._interpreter)  # never freed in the child: its threads are not here
        self._interpreter = None
        self._lock = threading.Lock()

    def run(self, images: np.ndarray) -> np.ndarray:
        """Raw positive-class probability for each image of a float32 ``(N, H, W, C)`` batch."""
        return np.array([self._invoke(_quantize(image[np.newaxis], self._input))
                         for image in images], dtype=np.float64)

    def run_pixels(self, pixels: np.ndarray, spec: Preprocessing) -> float:
        """Raw positive-class probability of uint8 ``(H, W)`` pixels; for an integer input
        tensor, pixels map straight to its values through a 256-entry table, which gives the
        same tensor as quantizing :func:`~pneumocnn.core.preprocessing.to_model_input`."""
        if np.dtype(self._input["dtype"]) == np.float32:
            return float(self.run(to_model_input(pixels, spec)[np.newaxis])[0])
        table = self._pixel_tables.get(spec.scale)
        if table is None:
            levels = np.arange(256, dtype=np.float32) * np.float32(spec.scale)
            table = self._pixel_tables[spec.scale] = _quantize(levels, self._input)
        quantized = np.repeat(table[pixels][np.newaxis, ..., np.newaxis], spec.channels, axis=-1)
        return self._invoke(quantized)

    def _invoke(self, tensor: np.ndarray) -> float:
        with self._lock:
            if self._interpreter is None:
                self._interpreter = self._open()
            self._interpreter.set_tensor(self._input["index"], tensor)
            self._interpreter.invoke()
            output = self._interpreter.get_tensor(self._output["index"])
        return float(positive_probability(_dequantize(output, self._output))[0])


_BACKENDS: weakref.WeakSet[TFLiteBackend] = weakref.WeakSet()
_ORPHANS: list = []


def _reopen_after_fork() -> None:
    for backend in list(_BACKENDS):
        backend._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_after_fork)


def _check_tensors(source: str, description: ModelDescription, input_: dict, output: dict) -> None:
    """Refuse a model whose input and output tensors disagree with its description or cannot
    give a probability (shape, type, quantization parameters)."""
    shape = tuple(int(n) for n in input_["shape"])
    expected = (1, *description.preprocessing.input_shape)
    if shape != expected:
        raise ModelFileError(source, f"input tensor shape {shape} disagrees with the description "
                                     f"{expected}")
    shape = tuple(int(n) for n in output["shape"])
    if shape not in ((1, 1), (1, 2)):
        raise ModelFileError(source, f"output tensor shape {shape} is not (1, 1) or (1, 2)")
    for tensor in (input_, output):
        dtype = np.dtype(tensor["dtype"])
        if dtype not in (np.float32, np.int8, np.uint8):
            raise ModelFileError(source, f"unsupported tensor type {dtype}")
        if dtype != np.float32:
            scale, zero_point = tensor["quantization"]
            info = np.iinfo(dtype)
            if not (math.isfinite(scale) and scale > 0 and info.min <= zero_point <= info.max):
                raise ModelFileError(source, f"{dtype} tensor {tensor['name']!r} has invalid "
                                             f"quantization (scale {scale}, zero point {zero_point})")
    quantization = description.info.get("quantization")
    if quantization is not None:
        wanted = np.int8 if quantization == "int8" else np.float32
        if np.dtype(input_["dtype"]) != wanted:
            raise ModelFileError(source, f"the description says {quantization!r} quantization but "
                                         f"the input tensor is {np.dtype(input_['dtype'])}")


def _quantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    dtype = np.dtype(tensor["dtype"])
    if dtype == np.float32:
        return values.astype(np.float32, copy=False)
    scale, zero_point = tensor["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    if np.dtype(tensor["dtype"]) == np.float32:
        return values.astype(np.float64)
    scale, zero_point = tensor["quantization"]
    return (values.astype(np.float64) - zero_point) * scale


class KerasBackend:
    """A Keras model loaded in safe mode (no arbitrary code); needs TensorFlow."""

    def __init__(self, path: Path, description: ModelDescription | None = None) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import keras
        except ImportError:
            raise MissingDependencyError(
                f"{path}: .keras models need TensorFlow: pip install 'pneumocnn[train]'"
            ) from None
        try:
            self._model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as error:  # Keras raises many types for bad or unsafe archives
            raise ModelFileError(str(path), f"Keras cannot load this model in safe mode ({error})") from error
        if description is not None:
            shape = tuple(getattr(self._model, "input_shape", (None,))[1:])
            if shape != description.preprocessing.input_shape:
                raise ModelFileError(str(path), f"model input shape {shape} disagrees with the "
                                                f"description {description.preprocessing.input_shape}")
        self._lock = threading.Lock()

    @property
    def keras_model(self):
        """The loaded ``keras.Model`` (for Grad-CAM and other Keras-only tools)."""
        return self._model

    def run(self, images: np.ndarray) -> np.ndarray:
        """Raw positive-class probability for each image of a float32 ``(N, H, W, C)`` batch."""
        with self._lock:
            outputs = self._model(images, training=False)
        return positive_probability(outputs)

    def run_pixels(self, pixels: np.ndarray, spec: Preprocessing) -> float:
        """Raw positive-class probability of uint8 ``(H, W)`` pixels."""
        return float(self.run(to_model_input(pixels, spec)[np.newaxis])[0])


def open_backend(path: Path, threads: int | None = None):
    """Return ``(backend, description)`` for a ``.tflite`` or ``.keras`` file."""
    if not path.is_file():
        raise ModelFileError(str(path), "is not a regular file" if path.exists() else
                             "model file does not exist")
    if path.suffix == ".keras":
        description = read_keras_description(path)
        return KerasBackend(path, description), description
    if path.stat().st_size >= 2**31:
        raise ModelFileError(str(path), "not a TFLite model (over the 2 GiB FlatBuffer limit)")
    content = path.read_bytes()
    description = read_from_tflite(content, str(path))
    return TFLiteBackend(content, description, str(path), threads), description
