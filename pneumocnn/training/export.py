"""Write Keras models as self-describing ``.keras`` and ``.tflite`` files.

TFLite variants: ``float32``; ``float16`` (weights stored as float16); ``dynamic-int8`` (int8
weights, float activations); ``int8`` (int8 weights and activations, calibrated on
representative images, with a float head). ``int8`` is the deployable default.

The head of an ``int8`` model (its fully-connected layers and the sigmoid or softmax) stays in
float, as TensorFlow's selective quantization allows: quantized to int8, the output takes at
most 256 values and a sigmoid saturates into a handful of them near 1, so that hundreds of
X-rays share one probability and a worklist sorted by it cannot be ordered. The head is a
negligible part of the compute. Input and output tensors are float32 (the graph quantizes the
input in its first op).

Every ``.tflite`` file takes one input channel. pneumocnn's models see grayscale X-rays
repeated into three equal channels; a first convolution over three equal channels is the same
convolution over one with its kernel summed over the channels, so a Sequential model that
starts with ``Conv2D`` is exported that way (same answers to float rounding; less work in its
first layer, and no channel copies for the runtime to make on every call).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import TEMPORARY, atomic_write, write_bytes
from pneumocnn.core.modelfile import ModelDescription, embed_in_keras, embed_in_tflite

QUANTIZATIONS = ("float32", "float16", "dynamic-int8", "int8")
# The ops an int8 model keeps in float: its head (see the module's docstring).
FLOAT_HEAD = ["FULLY_CONNECTED", "LOGISTIC", "SOFTMAX"]


def save_keras(model, description: ModelDescription, path: str | Path) -> None:
    """Atomically save ``model`` to ``path`` (``.keras``) with ``description`` inside it."""
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY) as scratch:
        staged = Path(scratch) / path.name
        model.save(staged)
        embed_in_keras(staged, description)
        with atomic_write(path) as stream, staged.open("rb") as source:
            shutil.copyfileobj(source, stream)


def to_tflite(
    model,
    description: ModelDescription,
    quantization: str = "int8",
    representative: np.ndarray | None = None,
) -> bytes:
    """Convert a Keras model (or a SavedModel folder) to ``.tflite`` bytes with ``description``.

    ``representative`` (float32 model inputs, a few hundred images) is required for ``int8``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if isinstance(model, (str, os.PathLike)):
        converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(model))
    else:
        model, description = one_channel(model, description)
        if representative is not None:
            representative = representative[..., : description.preprocessing.channels]
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    described = description.with_info(quantization=quantization)
    if quantization != "int8":
        return embed_in_tflite(converter.convert(), described)
    if representative is None or len(representative) == 0:
        raise ValueError("int8 quantization needs representative images")

    def samples():
        for image in representative:
            yield [image[np.newaxis].astype(np.float32)]

    converter.representative_dataset = samples
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=samples,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=FLOAT_HEAD))
    return embed_in_tflite(debugger.get_nondebug_quantized_model(), described)


def one_channel(model, description: ModelDescription):
    """``(model, description)`` taking one input channel instead of several equal ones, when
    ``model`` is a Sequential model whose first layer is ``Conv2D`` (see the module's
    docstring); else both unchanged."""
    import keras

    spec = description.preprocessing
    layers = getattr(model, "layers", [])
    if (spec.channels == 1 or not isinstance(model, keras.Sequential) or not layers
            or not isinstance(layers[0], keras.layers.Conv2D)):
        return model, description
    gray = keras.Sequential([keras.Input((spec.height, spec.width, 1)),
                             *(type(layer).from_config(layer.get_config()) for layer in layers)],
                            name=model.name)
    for source, target in zip(layers, gray.layers, strict=True):
        weights = source.get_weights()
        if source is layers[0]:
            weights[0] = weights[0].sum(axis=2, keepdims=True)  # kernel (h, w, in, out)
        target.set_weights(weights)
    return gray, replace(description, preprocessing=replace(spec, channels=1))


def export_tflite(
    model,
    description: ModelDescription,
    out_dir: str | Path,
    representative: np.ndarray,
    quantizations: tuple[str, ...] = QUANTIZATIONS,
    stem: str = "model",
) -> dict[str, Path]:
    """Write ``{stem}-{quantization}.tflite`` for each variant; return their paths."""
    paths = {}
    for quantization in quantizations:
        path = Path(out_dir) / f"{stem}-{quantization}.tflite"
        write_bytes(path, to_tflite(model, description, quantization, representative))
        paths[quantization] = path
    return paths
