"""Model backends: run a batch of preprocessed images, return raw positive-class probabilities.

``TFLiteBackend`` runs ``.tflite`` files on LiteRT (``ai-edge-litert``), falling back to
``tflite_runtime`` or TensorFlow's interpreter when LiteRT is not installed. ``KerasBackend``
runs ``.keras`` files and needs TensorFlow. Both are safe to call from several threads.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from pneumocnn.description import ModelDescription, read_from_tflite
from pneumocnn.errors import MissingDependencyError, ModelFileError

KERAS_MEMBER = "pneumocnn.json"


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
    """A LiteRT interpreter over one ``.tflite`` model, serialised by a lock."""

    def __init__(self, content: bytes, description: ModelDescription, source: str,
                 threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        try:
            self._interpreter = _interpreter_class()(model_content=content,
                                                     num_threads=self.threads)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise ModelFileError(source, f"the TFLite runtime cannot load this model ({error})") from error
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(source, f"expected one input and one output tensor, found "
                                         f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        expected = (1, *description.preprocessing.input_shape)
        if tuple(self._input["shape"]) != expected:
            raise ModelFileError(source, f"input tensor shape {tuple(self._input['shape'])} "
                                         f"disagrees with the description {expected}")
        if tuple(self._output["shape"]) not in ((1, 1), (1, 2)):
            raise ModelFileError(source, f"output tensor shape {tuple(self._output['shape'])} "
                                         "is not (1, 1) or (1, 2)")
        for tensor in (self._input, self._output):
            if np.dtype(tensor["dtype"]) not in (np.float32, np.int8, np.uint8):
                raise ModelFileError(source, f"unsupported tensor type {tensor['dtype']}")
        self._lock = threading.Lock()

    def run(self, images: np.ndarray) -> np.ndarray:
        """Raw positive-class probability for each image of a float32 ``(N, H, W, C)`` batch."""
        probabilities = np.empty(len(images), dtype=np.float64)
        for i, image in enumerate(images):
            quantized = _quantize(image[np.newaxis], self._input)
            with self._lock:
                self._interpreter.set_tensor(self._input["index"], quantized)
                self._interpreter.invoke()
                output = self._interpreter.get_tensor(self._output["index"])
            probabilities[i] = _dequantize(output, self._output)[0, -1]
        return probabilities


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

    def __init__(self, path: Path) -> None:
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
            raise ModelFileError(str(path), f"Keras cannot load this model ({error})") from error
        self._lock = threading.Lock()

    def run(self, images: np.ndarray) -> np.ndarray:
        """Raw positive-class probability for each image of a float32 ``(N, H, W, C)`` batch."""
        with self._lock:
            outputs = self._model(images, training=False)
        return np.asarray(outputs, dtype=np.float64)[:, -1]


def read_keras_description(path: Path) -> ModelDescription:
    """Read the description stored in a ``.keras`` archive (no TensorFlow needed)."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(KERAS_MEMBER)
    except KeyError:
        raise ModelFileError(str(path), "Keras model has no pneumocnn description; convert it "
                                        "with pneumocnn.convert()") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelFileError(str(path), f"not a readable .keras archive ({error})") from error
    return ModelDescription.from_json(text, str(path))


def open_backend(path: Path, threads: int | None = None):
    """Return ``(backend, description)`` for a ``.tflite`` or ``.keras`` file."""
    if not path.is_file():
        raise ModelFileError(str(path), "model file does not exist")
    if path.suffix == ".keras":
        description = read_keras_description(path)
        return KerasBackend(path), description
    content = path.read_bytes()
    description = read_from_tflite(content, str(path))
    return TFLiteBackend(content, description, str(path), threads), description
