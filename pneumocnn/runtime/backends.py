"""Model backends: the :class:`Backend` protocol, and the two runtimes that implement it.

A backend takes a batch of preprocessed uint8 pixels ``(N, H, W)``, as
:func:`~pneumocnn.core.preprocessing.load_pixels` gives them, and returns raw (uncalibrated)
positive-class probabilities; it owns the rest of the way to its model's input tensor (scaling,
channels, quantization). ``TFLiteBackend`` runs ``.tflite`` files on LiteRT
(``ai-edge-litert``), falling back to ``tflite_runtime`` or TensorFlow's interpreter when LiteRT
is not installed. ``KerasBackend`` runs ``.keras`` files and needs TensorFlow; it also has the
:class:`ClassActivationBackend` capability (Grad-CAM). Both are safe to call from several threads.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pneumocnn.core.errors import MissingDependencyError, ModelFileError
from pneumocnn.core.modelfile import (
    KnownAnswers,
    ModelDescription,
    positive_probability,
    read_keras_description,
    read_tflite_description,
)
from pneumocnn.core.preprocessing import to_model_input, to_model_inputs
from pneumocnn.runtime import native_stderr

GRAD_CAM_NEEDS = "Grad-CAM needs a .keras Sequential model (as pneumocnn trains); use occlusion()"


@runtime_checkable
class Backend(Protocol):
    """What :class:`~pneumocnn.runtime.model.Model` asks of a model runtime."""

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Raw positive-class probability, float64 ``(N,)``, of each image of a batch of uint8
        pixels ``(N, H, W)`` at the model's input size, as
        :func:`~pneumocnn.core.preprocessing.load_pixels` gives them."""
        ...


@runtime_checkable
class ClassActivationBackend(Backend, Protocol):
    """A backend that can also say where in the image its answer came from (Grad-CAM)."""

    def class_activation(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """Grad-CAM of one image of uint8 pixels ``(H, W)``: the class-activation map of the
        positive class at the last convolution's resolution (float32, non-negative), and the
        raw positive-class probability. Raises ``ValueError`` when the model has no such
        convolution."""
        ...


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


def runtime_version() -> str:
    """The TFLite runtime ``.tflite`` files run on here and its version, such as
    ``"ai_edge_litert 2.3.0"`` (read from the module, which loading imports anyway: asking the
    installed distributions would cost a fresh process tens of milliseconds)."""
    package = _interpreter_class().__module__.split(".")[0]
    return f"{package} {getattr(sys.modules[package], '__version__', 'unknown')}"


class TFLiteBackend:
    """A LiteRT interpreter over one ``.tflite`` model, serialised by a lock.

    The model is checked against its description and run once at load, on the known answers
    its description carries (and refused when one is off: wrong kernels on this CPU) or on zeros,
    so that a damaged, inconsistent or wrongly computed file fails in :func:`~pneumocnn.load`,
    not in the middle of a batch.
    In a child made by ``fork`` the interpreter is opened afresh on first use: the parent's
    lock may have been held, and its interpreter threads do not exist, in the child.
    """

    def __init__(self, content: bytes, description: ModelDescription, source: str,
                 threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._content = content
        self._spec = description.preprocessing
        self._lock = threading.Lock()
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
        # pixels map straight to input values through a 256-entry table (scaled, and quantized
        # for an integer input tensor): to_model_input's tensor in one lookup
        levels = np.arange(256, dtype=np.float32) * np.float32(self._spec.scale)
        self._table = _quantize(levels, self._input)
        self._self_test(description.known_answers, source)
        _BACKENDS.add(self)

    def _self_test(self, answers: KnownAnswers | None, source: str) -> None:
        """Run the model once at load: on its known answers, refusing it when an answer is off
        by more than their tolerance (wrong kernels on this CPU), or on zeros when the file
        has none (made before pneumocnn 0.2)."""
        spec = self._spec
        pixels = (answers.pixels(spec.height, spec.width) if answers is not None
                  else np.zeros((1, spec.height, spec.width), np.uint8))
        try:
            outputs = self.probabilities(pixels)
        except RuntimeError as error:
            raise ModelFileError(source, f"the TFLite runtime cannot run this model ({error})") from error
        wrong = answers.mismatch(outputs) if answers is not None else None
        if wrong is not None:
            raise ModelFileError(source, f"refused on this CPU: known-answer check failed: {wrong}; "
                                         "the runtime's kernels for this model give wrong "
                                         "answers here")

    def _open(self):
        with native_stderr.dropping():  # LiteRT's INFO line about its CPU delegate, no more
            interpreter = _interpreter_class()(model_content=self._content,
                                               num_threads=self.threads)
            interpreter.allocate_tensors()
        return interpreter

    def _after_fork(self) -> None:
        _ORPHANS.append(self._interpreter)  # never freed in the child: its threads are not here
        self._interpreter = None
        self._lock = threading.Lock()

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Raw positive-class probability of each image of uint8 ``(N, H, W)`` pixels, one
        interpreter call per image (the model's batch size is 1)."""
        return np.array([self._invoke(self._tensor(image)) for image in pixels], dtype=np.float64)

    def _tensor(self, pixels: np.ndarray) -> np.ndarray:
        """The ``(1, H, W, C)`` input tensor of uint8 ``(H, W)`` pixels."""
        values = np.take(self._table, pixels)[np.newaxis, ..., np.newaxis]
        if self._spec.channels == 1:
            return values
        return np.repeat(values, self._spec.channels, axis=-1)

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
        # int8: full-integer I/O (pneumocnn 0.1), or float I/O around an int8 body with a
        # float head (see pneumocnn.training.export); every other kind has float I/O
        wanted = (np.int8, np.float32) if quantization == "int8" else (np.float32,)
        if np.dtype(input_["dtype"]) not in wanted:
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
    """A Keras model loaded in safe mode (no arbitrary code); needs TensorFlow.

    Without a ``description`` the model is loaded and checked only: it cannot be run, since
    the description says how pixels become its input."""

    def __init__(self, path: Path, description: ModelDescription | None = None) -> None:
        self._path = path
        self._spec = description.preprocessing if description is not None else None
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
        """The loaded ``keras.Model`` (to save it again, or for other Keras-only tools)."""
        return self._model

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Raw positive-class probability of each image of uint8 ``(N, H, W)`` pixels, in one
        call of the model."""
        if len(pixels) == 0:
            return np.zeros(0, np.float64)
        inputs = to_model_inputs(pixels, self._preprocessing())
        with self._lock:
            outputs = self._model(inputs, training=False)
        return positive_probability(outputs)

    def class_activation(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """Grad-CAM on the last convolution of a Sequential model (as pneumocnn trains): the
        positive-class score's gradient, averaged over the feature map, weights its channels."""
        import keras
        import tensorflow as tf

        network = self._model
        if not isinstance(network, keras.Sequential):
            raise ValueError(f"{self._path}: {GRAD_CAM_NEEDS}")
        last_conv = max((i for i, layer in enumerate(network.layers)
                         if isinstance(layer, keras.layers.Conv2D)), default=None)
        if last_conv is None:
            raise ValueError(f"{self._path}: the model has no convolution layer")
        image = to_model_input(pixels, self._preprocessing())[np.newaxis]
        with self._lock, tf.GradientTape() as tape:
            outputs = tf.constant(image)
            for index, layer in enumerate(network.layers):
                outputs = layer(outputs, training=False)
                if index == last_conv:
                    features = outputs
                    tape.watch(features)
            score = outputs[:, -1]  # the positive class, as positive_probability picks it
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0]
        return cam.numpy().astype(np.float32), float(positive_probability(outputs.numpy())[0])

    def _preprocessing(self):
        if self._spec is None:
            raise ValueError(f"{self._path}: this backend was opened without the model's "
                             "description, so it cannot turn pixels into model inputs")
        return self._spec


def open_backend(path: Path, threads: int | None = None) -> tuple[Backend, ModelDescription]:
    """Return ``(backend, description)`` for a ``.tflite`` or ``.keras`` file."""
    if path.suffix == ".keras":
        _check_is_file(path)
        description = read_keras_description(path)
        return KerasBackend(path, description), description
    content, description = read_tflite_file(path)
    return TFLiteBackend(content, description, str(path), threads), description


def read_tflite_file(path: Path) -> tuple[bytes, ModelDescription]:
    """The bytes and the description of a ``.tflite`` file; raises
    :class:`~pneumocnn.ModelFileError` for anything that is not a described model file."""
    _check_is_file(path)
    if path.stat().st_size >= 2**31:
        raise ModelFileError(str(path), "not a TFLite model (over the 2 GiB FlatBuffer limit)")
    content = path.read_bytes()
    return content, read_tflite_description(content, str(path))


def _check_is_file(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(str(path), "is not a regular file" if path.exists() else
                             "model file does not exist")
