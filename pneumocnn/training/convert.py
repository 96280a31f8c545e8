"""``convert``: turn a model made elsewhere into a self-describing ``.tflite`` file.

Sources: a ``.keras`` file (its pneumocnn description is kept when it has one), a TensorFlow
SavedModel folder, a full-model ``.h5`` file, or a weights-only ``.h5`` file of the seed's
TO-BE CNN (the report's ``save_weights('first_try.h5')``), which is rebuilt and loaded.

A pneumocnn ``.tflite`` file is re-stamped instead (no TensorFlow needed): its weights, graph
and description (provenance included) are kept, with any ``threshold`` or ``labels`` override,
and it gets a fresh SHA-256 digest (see :mod:`pneumocnn.core.modelfile`), and known answers
when it has none (chosen among coarse copies of the X-rays of ``representative`` when given,
else among synthetic images; see :mod:`pneumocnn.training.export`). This brings a file made by
pneumocnn 0.1.0 to today's format; a stamped file that no longer matches its digest is
refused, so damage is never blessed::

    pneumocnn convert pneumocnn/models/pneumonia-int8.tflite --out pneumocnn/models/pneumonia-int8.tflite
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import write_bytes
from pneumocnn.core.errors import InputError, ModelFileError
from pneumocnn.core.inputs import walk_images
from pneumocnn.core.modelfile import (
    ModelDescription,
    embed_in_tflite,
    read_keras_description,
    read_tflite_description,
)
from pneumocnn.core.preprocessing import Preprocessing, preprocess

log = logging.getLogger(__name__)


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    quantization: str | None = None,
    representative: str | os.PathLike | None = None,
    representative_images: int = 300,
    threshold: float | None = None,
    labels: tuple[str, str] | None = None,
    architecture: str = "seed-to-be",
    seed: int = 0,
) -> Path:
    """Convert ``source`` to ``out`` (``.tflite``) and return ``out``.

    ``quantization`` is one of :data:`~pneumocnn.training.export.QUANTIZATIONS`; by default
    ``int8`` when ``representative`` is given, else ``float16`` (half the size of float32, as
    accurate, and needs no data); a ``.tflite`` source keeps its own and refuses another.
    ``representative`` is a folder of X-rays (searched recursively) used to calibrate ``int8``
    quantization; up to ``representative_images`` of them are used. ``threshold`` and ``labels`` override the
    description (defaults: the source's own, else 0.5 and NORMAL/PNEUMONIA). ``architecture``
    names the model a weights-only ``.h5`` file belongs to.
    """
    source = Path(source)
    overrides: dict[str, object] = {}
    if threshold is not None:
        overrides["threshold"] = threshold
    if labels is not None:
        overrides["labels"] = tuple(labels)
    if source.suffix == ".tflite":
        return _restamp(source, Path(out), quantization, overrides, representative,
                        representative_images, seed)
    if quantization is None:
        quantization = "int8" if representative is not None else "float16"
        log.warning("%s: writing %s (%s)", out, quantization,
                    "calibrated on the X-rays given" if representative is not None else
                    "int8 needs X-rays to calibrate on: pass a folder of them")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pneumocnn.training.export import to_tflite

    model, description = _open_source(source, architecture)
    description = replace(description, **overrides)
    description = description.with_info(converted_from=source.name)
    samples = None
    if quantization == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs representative X-rays: pass a folder")
        samples = _representative(Path(representative), description.preprocessing,
                                  representative_images, seed)
    out = Path(out)
    write_bytes(out, to_tflite(model, description, quantization, samples))
    return out


def _restamp(source: Path, out: Path, quantization: str | None, overrides: dict,
             representative: str | os.PathLike | None, count: int, seed: int) -> Path:
    """Write ``source``, a pneumocnn ``.tflite``, to ``out`` with a fresh digest (and the
    description ``overrides``, and known answers when it has none, chosen among coarse copies
    of up to ``count`` X-rays of the folder ``representative``); nothing else changes. ``out``
    may be ``source``."""
    from pneumocnn.training.export import reference_candidates, with_known_answers

    if not source.is_file():
        raise ModelFileError(str(source), "does not exist" if not source.exists()
                             else "is not a regular file")
    content = source.read_bytes()
    description = read_tflite_description(content, str(source))  # refuses a damaged stamped file
    own = description.info.get("quantization")
    if quantization is not None and quantization != own:
        raise ValueError(f"{source} is {own or 'of unknown'} quantization; a .tflite file is "
                         f"re-stamped as it is, not re-quantized to {quantization}")
    description = replace(description, **overrides)
    if description.known_answers is None:
        spec = description.preprocessing
        images = (None if representative is None else
                  _representative(Path(representative), spec, count, seed))
        description = with_known_answers(content, description, reference_candidates(images, spec))
    write_bytes(out, embed_in_tflite(content, description))
    return out


def _open_source(source: Path, architecture: str):
    """Return ``(keras model or SavedModel path, description)``."""
    import keras

    if not source.exists():
        raise ModelFileError(str(source), "does not exist")
    if source.is_dir():
        return str(source), _described_by_shape(_saved_model_input_shape(source), "savedmodel")
    if source.suffix == ".keras":
        model = keras.saving.load_model(source, compile=False, safe_mode=True)
        try:
            return model, read_keras_description(source)
        except ModelFileError:
            return model, _described_by_shape(model.input_shape[1:], model.name)
    if source.suffix == ".h5":
        try:
            model = keras.saving.load_model(source, compile=False, safe_mode=True)
        except (ValueError, KeyError, TypeError, OSError):
            return _from_weights(source, architecture)
        return model, _described_by_shape(model.input_shape[1:], model.name)
    raise ModelFileError(str(source), "expected a .keras or .h5 file or a SavedModel folder")


def _from_weights(source: Path, architecture: str):
    from pneumocnn.training.architectures import get_architecture

    recipe = get_architecture(architecture)
    spec = Preprocessing()
    model = recipe.build(spec.input_shape, recipe.outputs)
    try:
        model.load_weights(source)
    except (ValueError, KeyError, OSError) as error:
        raise ModelFileError(
            str(source), f"not a full model nor {architecture} weights ({error})"
        ) from error
    description = ModelDescription(preprocessing=spec).with_info(architecture=recipe.name)
    return model, description


def _described_by_shape(shape, architecture: str) -> ModelDescription:
    height, width, channels = (int(d) for d in shape)
    spec = Preprocessing(height=height, width=width, channels=channels)
    return ModelDescription(preprocessing=spec).with_info(architecture=architecture)


def _saved_model_input_shape(folder: Path) -> tuple[int, ...]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ModelFileError(str(folder), "expected one image input of shape (N, H, W, C)")
    return tuple(specs[0].shape[1:])


def _representative(folder: Path, spec: Preprocessing, count: int, seed: int) -> np.ndarray:
    if not folder.is_dir():
        raise InputError(str(folder), "representative data must be a folder of X-rays")
    files = [path for path in walk_images(folder) if isinstance(path, Path)]
    if not files:
        raise InputError(str(folder), "holds no images")
    chosen = np.random.default_rng(seed).permutation(len(files))[:count]
    images = []
    for index in sorted(chosen):
        try:
            images.append(preprocess(files[index], spec))
        except InputError as error:
            log.warning("skipping representative image %s", error)
    if not images:
        raise InputError(str(folder), "none of its images could be read")
    return np.stack(images)
