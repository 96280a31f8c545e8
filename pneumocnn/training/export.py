"""Write Keras models as self-describing ``.keras`` and ``.tflite`` files.

TFLite variants: ``float32``; ``float16`` (weights stored as float16); ``dynamic-int8`` (int8
weights, float activations); ``int8`` (int8 weights and activations, calibrated on
representative images, with a float head). ``int8`` is the deployable default.

The head of an ``int8`` model (its fully-connected layers and the sigmoid or softmax) stays in
float, as TensorFlow's selective quantization allows: quantized to int8, the output takes at
most 256 values and a sigmoid saturates into a handful of them near 1, so that hundreds of
X-rays share one probability and a worklist sorted by it cannot be ordered. The head is a
negligible part of the compute. Input and output tensors are float32.

So is the first convolution of an ``int8`` model that takes one input channel, and a max-pooling
right after it: XNNPACK's int8 convolution over a single input channel uses a small part of each
instruction (on an AVX2 CPU it took 1.09 ms where the float one took 0.35 ms, 30 % of the int8
model's time, for 4 % of its multiply-adds; docs/speed.md). The graph quantizes the
pooled activations, a quarter of the first convolution's, and runs the rest in int8.

Every ``.tflite`` file takes one input channel. pneumocnn's models see grayscale X-rays
repeated into three equal channels; a first convolution over three equal channels is the same
convolution over one with its kernel summed over the channels, so a Sequential model that
starts with ``Conv2D`` is exported that way (same answers to float rounding; less work in its
first layer, and no channel copies for the runtime to make on every call).

Every ``.tflite`` file carries known answers (:class:`~pneumocnn.core.modelfile.KnownAnswers`):
reference inputs, coarse copies of representative X-rays (2 x 2 blocks, 16 grey levels: about
2 kB each at 150 px) whose raw answers lie near :data:`REFERENCE_TARGETS`, where a wrong kernel
shows, and the answers LiteRT gave for them here, through the runtime's own backend. The
runtime refuses a file whose answers it cannot reproduce within the variant's tolerance
(:data:`KNOWN_ANSWER_TOLERANCE`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import TEMPORARY, atomic_write, write_bytes
from pneumocnn.core.modelfile import (
    KnownAnswers,
    ModelDescription,
    embed_in_keras,
    embed_in_tflite,
    read_tflite_description,
    tiled,
)
from pneumocnn.core.preprocessing import Preprocessing

QUANTIZATIONS = ("float32", "float16", "dynamic-int8", "int8")
# The ops an int8 model keeps in float: its head (see the module's docstring).
FLOAT_HEAD = ["FULLY_CONNECTED", "LOGISTIC", "SOFTMAX"]
# Raw answers the reference inputs are chosen near: away from 0 and 1, where a probability
# hides a wrong logit, and on both sides of any threshold.
REFERENCE_TARGETS = (0.2, 0.5, 0.8)
# How far a loader's answer to a reference input may lie from the exporter's, per variant: at
# least eight times the largest difference between LiteRT's two x86-64 kernel sets (XNNPACK and
# its builtin kernels) on the bundled model's variants over 96 inputs (int8 0.004-0.006,
# dynamic-int8 0.0002, float16 3e-7; docs/speed.md), and no less than 0.001: a correct kernel
# stays well inside it, a wrong one (0.9994 for every X-ray) misses by far more.
KNOWN_ANSWER_TOLERANCE = {"float32": 1e-3, "float16": 1e-3, "dynamic-int8": 5e-3, "int8": 0.05}
MAX_REFERENCE_CANDIDATES = 64


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
    reference: np.ndarray | None = None,
) -> bytes:
    """Convert a Keras model (or a SavedModel folder) to ``.tflite`` bytes with ``description``
    and known answers.

    ``representative`` (float32 model inputs, a few hundred images) is required for ``int8``;
    the reference inputs are chosen among coarse copies of them (synthetic images without
    them), or are ``reference`` (uint8 ``(N, h, w)``, as :func:`coarse` makes them) when given.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if not isinstance(model, (str, os.PathLike)):
        model, description = one_channel(model, description)
        if representative is not None:
            representative = representative[..., : description.preprocessing.channels]

    def new_converter():
        if isinstance(model, (str, os.PathLike)):
            return tf.lite.TFLiteConverter.from_saved_model(os.fspath(model))
        return tf.lite.TFLiteConverter.from_keras_model(model)

    converter = new_converter()
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    described = description.with_info(quantization=quantization)
    candidates = reference if reference is not None else reference_candidates(
        representative, described.preprocessing)
    if quantization != "int8":
        content = converter.convert()
    else:
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs representative images")

        def samples():
            for image in representative:
                yield [image[np.newaxis].astype(np.float32)]

        converter.representative_dataset = samples
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=FLOAT_HEAD,
            denylisted_nodes=float_first_block(new_converter().convert()))
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=samples, debug_options=options)
        content = debugger.get_nondebug_quantized_model()
    return embed_in_tflite(content, with_known_answers(content, described, candidates))


def float_first_block(float_model: bytes) -> list[str]:
    """The names of the operators an ``int8`` export keeps in float at the start of the graph
    (see the module's docstring): the first ``CONV_2D`` when its input has one channel, and a
    ``MAX_POOL_2D`` that takes its output; none otherwise. ``float_model`` is the float32
    ``.tflite`` conversion, whose operators are named by their output tensors."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=float_model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    operators = interpreter._get_ops_details()  # the converter's own graph, in order
    convolutions = [op for op in operators if op["op_name"] == "CONV_2D"]
    if not convolutions or tensors[convolutions[0]["inputs"][0]]["shape"][-1] != 1:
        return []
    first = convolutions[0]
    block = [tensors[first["outputs"][0]]["name"]]
    pooling = [op for op in operators if op["op_name"] == "MAX_POOL_2D"
               and op["inputs"][0] == first["outputs"][0]]
    return block + [tensors[op["outputs"][0]]["name"] for op in pooling[:1]]


def reference_candidates(representative: np.ndarray | None, spec: Preprocessing,
                         count: int = MAX_REFERENCE_CANDIDATES) -> np.ndarray:
    """Candidate reference inputs, uint8 ``(N, h, w)``: coarse copies of up to ``count``
    ``representative`` model inputs (float32, as ``to_model_inputs`` makes them from pixels),
    evenly spaced among them; without any, ``count`` smooth synthetic images (seeded)."""
    if representative is not None and len(representative):
        chosen = np.unique(np.linspace(0, len(representative) - 1, count).astype(int))
        pixels = np.rint(representative[chosen, ..., 0] / spec.scale)
        return coarse(np.clip(pixels, 0, 255).astype(np.uint8))
    cells = np.random.default_rng(0).integers(0, 256, (count, 12, 12)).astype(np.uint8)
    rows = np.arange(spec.height) * 12 // spec.height
    columns = np.arange(spec.width) * 12 // spec.width
    return coarse(cells[:, rows][:, :, columns])


def coarse(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)`` pixels averaged over 2 x 2 blocks (when ``H`` and ``W`` are even)
    and rounded to 16 grey levels: ``(N, H/2, W/2)``, a few kB once compressed, which
    :meth:`KnownAnswers.pixels` brings back to ``(N, H, W)``."""
    _, height, width = pixels.shape
    block = 2 if height % 2 == 0 and width % 2 == 0 else 1
    means = pixels.reshape(len(pixels), height // block, block, width // block, block).mean(axis=(2, 4))
    return (np.rint(means / 17) * 17).astype(np.uint8)


def with_known_answers(content: bytes, description: ModelDescription,
                       candidates: np.ndarray) -> ModelDescription:
    """``description`` with known answers for the ``.tflite`` bytes ``content``: among
    ``candidates`` (uint8 ``(N, h, w)``), those whose raw answers lie nearest to
    :data:`REFERENCE_TARGETS` (all of them when there are no more), with the answers the
    runtime's LiteRT backend gives for them here and the variant's tolerance."""
    from pneumocnn.runtime.backends import TFLiteBackend

    spec = description.preprocessing
    plain = replace(description, known_answers=None)
    backend = TFLiteBackend(content, plain, "the exported model", threads=1)
    outputs = backend.probabilities(tiled(candidates, spec.height, spec.width))
    chosen: list[int] = list(range(len(candidates)))
    if len(candidates) > len(REFERENCE_TARGETS):
        chosen = []
        for target in REFERENCE_TARGETS:
            distance = np.abs(outputs - target)
            distance[chosen] = np.inf
            chosen.append(int(np.argmin(distance)))
    tolerance = KNOWN_ANSWER_TOLERANCE.get(str(description.info.get("quantization")), 0.05)
    return replace(description, known_answers=KnownAnswers(
        candidates[chosen], tuple(outputs[chosen]), tolerance))


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
    """Write ``{stem}-{quantization}.tflite`` for each variant, with the same reference inputs
    (chosen on the first); return their paths."""
    paths: dict[str, Path] = {}
    reference = None
    for quantization in quantizations:
        path = Path(out_dir) / f"{stem}-{quantization}.tflite"
        content = to_tflite(model, description, quantization, representative, reference)
        write_bytes(path, content)
        paths[quantization] = path
        answers = read_tflite_description(content, str(path)).known_answers
        assert answers is not None, "the exporter writes known answers into every file"
        reference = answers.inputs
    return paths
