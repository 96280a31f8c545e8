"""The model file contract: a small versioned JSON description embedded in every model file.

A ``.tflite`` file keeps it in the flatbuffer's metadata table under the name ``pneumocnn``; a
``.keras`` file keeps it as the archive member ``pneumocnn.json``. The runtime reads the input
size, preprocessing, labels, threshold and calibration from it and hard-codes none of them.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn.core.errors import MissingDependencyError, ModelFileError
from pneumocnn.core.metrics import logit
from pneumocnn.core.preprocessing import Preprocessing

FORMAT = "pneumocnn-model"
VERSION = 2  # 2: calibration may carry a bias; written only when it does
METADATA_NAME = "pneumocnn"
KERAS_MEMBER = "pneumocnn.json"
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_CONFIG_BYTES = 64 << 20


@dataclass(frozen=True)
class ModelDescription:
    """What a loader needs to use a model, plus informational provenance.

    ``labels`` are ``(negative, positive)``; the model outputs the positive-class probability.
    ``temperature`` and ``bias`` calibrate it (``sigmoid(logit(p) / temperature + bias)``);
    ``threshold`` applies to the calibrated probability. ``info`` holds architecture,
    quantization, training provenance, alternative thresholds and validation metrics, and is
    never used for computation.
    """

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, str] = ("NORMAL", "PNEUMONIA")
    threshold: float = 0.5
    temperature: float = 1.0
    bias: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (len(self.labels) != 2 or self.labels[0] == self.labels[1]
                or not all(isinstance(label, str) and label for label in self.labels)):
            raise ValueError(f"labels must be two distinct names, got {self.labels!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not math.isfinite(self.bias):
            raise ValueError(f"calibration bias must be finite, got {self.bias}")

    def calibrate(self, probability: np.ndarray) -> np.ndarray:
        """Map raw model probabilities to calibrated ones (identity when temperature is 1 and
        bias 0)."""
        p = np.asarray(probability, dtype=np.float64)
        if self.temperature == 1.0 and self.bias == 0.0:
            return p
        return 1.0 / (1.0 + np.exp(-(logit(p) / self.temperature + self.bias)))

    def with_info(self, **info: Any) -> ModelDescription:
        """Return a copy whose ``info`` is updated with the given keys."""
        return replace(self, info={**self.info, **info})

    def to_json(self) -> str:
        """Serialise to the JSON stored in model files."""
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION if self.bias else 1,  # readable by 0.1.0 where it can be
                "input": {
                    "height": self.preprocessing.height,
                    "width": self.preprocessing.width,
                    "channels": self.preprocessing.channels,
                },
                "preprocessing": self.preprocessing.to_dict(),
                "labels": list(self.labels),
                "threshold": self.threshold,
                "calibration": {"method": "temperature", "temperature": self.temperature,
                                **({"bias": self.bias} if self.bias else {})},
                **self.info,
            },
            indent=1,
            sort_keys=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> ModelDescription:
        """Parse and check a stored description; ``source`` names the file in errors."""
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ModelFileError(source, f"model description is not valid JSON ({error})") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(source, "model description is not a pneumocnn description")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(source, f"model description version {version!r} is not valid")
        if version > VERSION:
            raise ModelFileError(
                source,
                f"model description version {version!r} is newer than this pneumocnn "
                f"understands ({VERSION}); upgrade pneumocnn",
            )
        info = {
            key: value
            for key, value in data.items()
            if key not in ("format", "version", "input", "preprocessing", "labels", "threshold",
                           "calibration")
        }
        try:
            return cls(
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                labels=tuple(data["labels"]),
                threshold=float(data["threshold"]),
                temperature=float(data.get("calibration", {}).get("temperature", 1.0)),
                bias=float(data.get("calibration", {}).get("bias", 0.0)),
                info=info,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise ModelFileError(source, f"model description is incomplete or invalid ({error})") from error


def positive_probability(outputs: np.ndarray) -> np.ndarray:
    """The positive-class column of a model's ``(N, 1)`` sigmoid or ``(N, 2)`` softmax output,
    as float64 ``(N,)``: the contract every model file's output follows."""
    return np.asarray(outputs, dtype=np.float64)[:, -1]


def embed_in_tflite(model: bytes, description: ModelDescription) -> bytes:
    """Return a copy of a ``.tflite`` flatbuffer with ``description`` in its metadata table."""
    import flatbuffers

    schema = _schema()
    tree = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    tree.metadata = [m for m in (tree.metadata or []) if m.name != METADATA_NAME.encode()]
    payload = schema.BufferT()
    payload.data = np.frombuffer(description.to_json().encode(), dtype=np.uint8)
    tree.buffers.append(payload)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_from_tflite(model: bytes, source: str) -> ModelDescription:
    """Read the description from ``.tflite`` bytes; ``source`` names the file in errors."""
    schema = _schema()
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ModelFileError(source, "not a TFLite model (no TFL3 file identifier)")
    try:
        tree = schema.Model.GetRootAs(model, 0)
        for i in range(tree.MetadataLength()):
            entry = tree.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                text = tree.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
                return ModelDescription.from_json(text, source)
    except ModelFileError:
        raise
    except Exception as error:  # a damaged flatbuffer can fail in many ways while being walked
        raise ModelFileError(source, f"damaged TFLite model ({type(error).__name__}: {error})") from error
    raise ModelFileError(
        source,
        "TFLite model has no pneumocnn description; convert it with `pneumocnn convert` "
        "or pneumocnn.convert(), which embeds one",
    )


def _schema():
    """The TFLite flatbuffer schema module, from LiteRT or else from TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated
        except ImportError:
            raise MissingDependencyError(
                "reading .tflite model files needs the LiteRT runtime: pip install ai-edge-litert"
            ) from None
    return schema_py_generated


def embed_in_keras(path: Path, description: ModelDescription) -> None:
    """Add ``description`` to the ``.keras`` archive at ``path`` (in place: call it on a staged
    copy, then move the copy into place)."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(KERAS_MEMBER, description.to_json())


def read_keras_description(path: Path) -> ModelDescription:
    """Read the description stored in a ``.keras`` archive (no TensorFlow needed), after
    refusing an archive whose model config could run code (see :func:`_refuse_code`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = _read_member(archive, KERAS_MEMBER, MAX_DESCRIPTION_BYTES, str(path))
            config = _read_member(archive, "config.json", MAX_CONFIG_BYTES, str(path))
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as error:
        raise ModelFileError(str(path), f"not a readable .keras archive ({error})") from error
    _refuse_code(config, str(path))
    return ModelDescription.from_json(text, str(path))


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        what = "pneumocnn description; convert it with pneumocnn.convert()" if name == KERAS_MEMBER else name
        raise ModelFileError(source, f"Keras model has no {what}") from None
    if info.file_size > limit:  # a zip bomb
        raise ModelFileError(source, f"{name} is over {limit:,} bytes")
    return archive.read(info)


def _refuse_code(config: bytes, source: str) -> None:
    """Refuse a Keras model config that names a ``Lambda`` layer, a Python lambda, or any class
    or function from outside Keras: loading it could run code. Keras's own safe mode refuses
    lambdas too, but any code in the process can switch it off globally."""
    try:
        stack = [json.loads(config)]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelFileError(source, f"Keras model config is not valid JSON ({error})") from error
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module, name = item.get("module"), item.get("class_name")
            if name in ("Lambda", "__lambda__") or (
                    module is not None and str(module).split(".")[0] != "keras"):
                raise ModelFileError(source, f"Keras model config names {module}.{name}: a "
                                             "Lambda layer or code from outside Keras is refused")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
