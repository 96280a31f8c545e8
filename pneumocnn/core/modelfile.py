"""The model file contract: a small versioned JSON description embedded in every model file.

A ``.tflite`` file keeps it in the flatbuffer's metadata table under the name ``pneumocnn``; a
``.keras`` file keeps it as the archive member ``pneumocnn.json``. The runtime reads the input
size, preprocessing, labels, threshold and calibration from it and hard-codes none of them.

Integrity. A ``.tflite`` file written by :func:`embed_in_tflite` is *stamped*: its description
ends with ``"sha256": "<64 hex digits>"``, the SHA-256 of the whole file as written with those
64 digits set to ``0``. :func:`read_tflite_description` puts the zeros back in a copy, hashes it and
refuses a mismatch (``model file is damaged (digest mismatch ...)``) before LiteRT sees the
bytes, so every byte is covered: header, weights, graph and the description itself. Files
without a digest (pneumocnn 0.1.0's, other tools') load as before. The digest does not raise
the description's version: it changes nothing a reader computes, so pneumocnn 0.1.0 still reads
a stamped version-1 file and shows the digest as an informational field (it does not check it).
A ``.keras`` file gets no digest; see :func:`read_keras_description`.

Known answers. A ``.tflite`` file may carry a few reference inputs and the raw outputs its
exporter got for them (:class:`KnownAnswers`, the description's ``known_answers``); the runtime
runs them when it loads the file and refuses it when an answer is off by more than the file's
tolerance, so that a CPU whose kernels give wrong answers never scores X-rays silently. They are
computed from the weights, so they differ from variant to variant of one model. Like the digest,
they do not raise the description's version: pneumocnn 0.1.0 reads them as informational.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import struct
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
DIGEST_KEY = "sha256"  # the description's last member in a stamped .tflite file
_PLACEHOLDER = "0" * 64  # the digest's bytes while the file is hashed
# the stamp as embed_in_tflite writes it: the last member, exactly this spelling
_STAMP = re.compile(rb'"sha256": "([0-9a-f]{64})"\s*}\s*\Z')
# a last member holding 64 hex digits under another name: a stamp whose name was damaged
_NAMELESS_STAMP = re.compile(rb'"[^"\\]*": "[0-9a-f]{64}"\s*}\s*\Z')
KNOWN_ANSWERS_KEY = "known_answers"
MAX_KNOWN_ANSWERS = 16


@dataclass(frozen=True, eq=False)
class KnownAnswers:
    """Reference inputs of a model file and the raw outputs its exporter got for them.

    ``inputs`` is uint8 ``(N, h, w)``: each becomes a model input of the file's ``(H, W)`` by
    repeating every pixel into an ``H/h`` by ``W/w`` block (so a reference input is stored at a
    fraction of its size); it is then given to the backend as
    :func:`~pneumocnn.core.preprocessing.load_pixels` gives pixels. ``outputs`` are the raw
    (uncalibrated) positive-class probabilities the exporter's runtime gave for them;
    ``tolerance`` the largest absolute difference from them that a loader accepts.

    In JSON: ``{"size": [h, w], "inputs": [base64 of zlib-compressed row-major pixels, ...],
    "outputs": [...], "tolerance": t}``.
    """

    inputs: np.ndarray
    outputs: tuple[float, ...]
    tolerance: float

    def __post_init__(self) -> None:
        inputs = self.inputs
        if not (isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8 and inputs.ndim == 3
                and 1 <= len(inputs) <= MAX_KNOWN_ANSWERS and inputs.shape[1] and inputs.shape[2]):
            raise ValueError(f"known answers take 1 to {MAX_KNOWN_ANSWERS} uint8 inputs (N, h, w)")
        outputs = tuple(float(value) for value in self.outputs)
        if len(outputs) != len(inputs) or not all(0.0 <= value <= 1.0 for value in outputs):
            raise ValueError(f"known answers need one output in [0, 1] per input, got "
                             f"{len(outputs)} for {len(inputs)} inputs")
        if not (math.isfinite(self.tolerance) and 0 < self.tolerance < 1):
            raise ValueError(f"known-answer tolerance must lie in (0, 1), got {self.tolerance}")
        inputs.setflags(write=False)
        object.__setattr__(self, "outputs", outputs)

    def pixels(self, height: int, width: int) -> np.ndarray:
        """The reference inputs as uint8 pixels ``(N, height, width)`` (see :func:`tiled`)."""
        return tiled(self.inputs, height, width)

    def mismatch(self, outputs: np.ndarray) -> str | None:
        """``None`` when every one of ``outputs`` (this runtime's answers to the inputs, in
        order) is within the tolerance of the reference, else a sentence naming the worst."""
        got = np.asarray(outputs, dtype=np.float64)
        expected = np.asarray(self.outputs)
        errors = np.where(np.isfinite(got), np.abs(got - expected), np.inf)
        worst = int(np.argmax(errors))
        if errors[worst] <= self.tolerance:
            return None
        return (f"reference input {worst + 1} of {len(expected)} scored {got[worst]:.6f} here "
                f"against {expected[worst]:.6f} when the file was made (tolerance "
                f"{self.tolerance:g})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in the description."""
        return {"size": list(self.inputs.shape[1:]),
                "inputs": [base64.b64encode(zlib.compress(image.tobytes(), 9)).decode("ascii")
                           for image in self.inputs],
                "outputs": list(self.outputs), "tolerance": self.tolerance}

    @classmethod
    def from_dict(cls, data: Any) -> KnownAnswers:
        """Rebuild from :meth:`to_dict` output; ``ValueError`` for anything else."""
        if not isinstance(data, dict) or set(data) != {"size", "inputs", "outputs", "tolerance"}:
            raise ValueError("known_answers must hold size, inputs, outputs and tolerance")
        size, encoded = data["size"], data["inputs"]
        if (not isinstance(size, list) or len(size) != 2
                or not all(type(n) is int and 0 < n <= 4096 for n in size)):
            raise ValueError(f"known-answer size must be two positive integers, got {size!r}")
        if not isinstance(encoded, list) or not 1 <= len(encoded) <= MAX_KNOWN_ANSWERS:
            raise ValueError(f"known answers need 1 to {MAX_KNOWN_ANSWERS} inputs")
        length = size[0] * size[1]
        images = []
        for text in encoded:
            try:
                raw = zlib.decompressobj().decompress(base64.b64decode(text, validate=True),
                                                      length + 1)
            except (TypeError, binascii.Error, zlib.error) as error:
                raise ValueError(f"a known-answer input is not base64 zlib data ({error})") from None
            if len(raw) != length:
                raise ValueError(f"a known-answer input holds {len(raw)} pixels, not {length}")
            images.append(np.frombuffer(raw, np.uint8).reshape(size))
        if not isinstance(data["outputs"], list) or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool)
                for value in data["outputs"]):
            raise ValueError("known-answer outputs must be a list of numbers")
        tolerance = data["tolerance"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
            raise ValueError(f"known-answer tolerance must be a number, got {tolerance!r}")
        return cls(np.stack(images), tuple(data["outputs"]), float(tolerance))


@dataclass(frozen=True)
class ModelDescription:
    """What a loader needs to use a model, plus informational provenance.

    ``labels`` are ``(negative, positive)``; the model outputs the positive-class probability.
    ``temperature`` and ``bias`` calibrate it (``sigmoid(logit(p) / temperature + bias)``);
    ``threshold`` applies to the calibrated probability. ``info`` holds architecture,
    quantization, training provenance, alternative thresholds and validation metrics, and is
    never used for computation. ``known_answers`` are the file's reference inputs and outputs
    (``None`` in files made before pneumocnn 0.2 and in ``.keras`` files); they belong to one
    variant's weights, so comparisons ignore them. ``sha256`` is the digest recorded in the
    ``.tflite`` file the description was read from (``None`` when unstamped);
    :func:`embed_in_tflite` writes a fresh one whatever it holds, and comparisons ignore it.
    """

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, str] = ("NORMAL", "PNEUMONIA")
    threshold: float = 0.5
    temperature: float = 1.0
    bias: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    known_answers: KnownAnswers | None = field(default=None, compare=False)
    sha256: str | None = field(default=None, compare=False)

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
        if self.sha256 is not None and not _is_digest(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        for key in (DIGEST_KEY, KNOWN_ANSWERS_KEY):
            if key in self.info:
                raise ValueError(f"info may not hold {key!r}: it is a field of its own")
        if self.known_answers is not None:
            self.known_answers.pixels(self.preprocessing.height, self.preprocessing.width)

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
                **({KNOWN_ANSWERS_KEY: self.known_answers.to_dict()}
                   if self.known_answers is not None else {}),
                **({DIGEST_KEY: self.sha256} if self.sha256 is not None else {}),  # last
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
                           "calibration", KNOWN_ANSWERS_KEY, DIGEST_KEY)
        }
        digest = data.get(DIGEST_KEY)
        if digest is not None and not _is_digest(digest):
            raise ModelFileError(source, f"model file is damaged (its {DIGEST_KEY} field is not "
                                         "64 lowercase hex digits)")
        try:
            return cls(
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                labels=tuple(data["labels"]),
                threshold=float(data["threshold"]),
                temperature=float(data.get("calibration", {}).get("temperature", 1.0)),
                bias=float(data.get("calibration", {}).get("bias", 0.0)),
                info=info,
                known_answers=(KnownAnswers.from_dict(data[KNOWN_ANSWERS_KEY])
                               if KNOWN_ANSWERS_KEY in data else None),
                sha256=digest,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise ModelFileError(source, f"model description is incomplete or invalid ({error})") from error


def tiled(inputs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels ``(N, h, w)`` brought to ``(N, height, width)`` by repeating each into an
    ``height/h`` by ``width/w`` block; ``ValueError`` unless ``(h, w)`` divides the size."""
    _, h, w = inputs.shape
    if height % h or width % w:
        raise ValueError(f"known-answer inputs of {h}x{w} do not tile a {height}x{width} input")
    return inputs.repeat(height // h, axis=1).repeat(width // w, axis=2)


def positive_probability(outputs: np.ndarray) -> np.ndarray:
    """The positive-class column of a model's ``(N, 1)`` sigmoid or ``(N, 2)`` softmax output,
    as float64 ``(N,)``: the contract every model file's output follows."""
    return np.asarray(outputs, dtype=np.float64)[:, -1]


def embed_in_tflite(model: bytes, description: ModelDescription) -> bytes:
    """Return a copy of a ``.tflite`` flatbuffer with ``description`` in its metadata table,
    stamped with the SHA-256 of the returned bytes (see the module's docstring).

    A description already in the file is replaced, in the same buffer when nothing else uses
    it; the tensors, their buffers and other metadata are copied unchanged. Re-stamping a file
    is ``embed_in_tflite(content, read_tflite_description(content, name))``.
    """
    import flatbuffers

    schema = _schema()
    tree = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    name = METADATA_NAME.encode()
    previous = [m.buffer for m in (tree.metadata or []) if m.name == name]
    tree.metadata = [m for m in (tree.metadata or []) if m.name != name]
    text = replace(description, sha256=_PLACEHOLDER).to_json().encode()
    payload = schema.BufferT()
    payload.data = np.frombuffer(text, dtype=np.uint8)
    used = {m.buffer for m in tree.metadata} | {tensor.buffer for graph in tree.subgraphs or []
                                                for tensor in graph.tensors or []}
    free = [i for i in previous if 0 < i < len(tree.buffers) and i not in used]
    if free:  # the old description's buffer: no orphan left behind by re-embedding
        tree.buffers[free[0]] = payload
    else:
        tree.buffers.append(payload)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = free[0] if free else len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + len(text) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    output = bytearray(builder.Output())
    found = _find_description(output)
    assert found is not None and found[0] == text, "the description was not written verbatim"
    stamp = _STAMP.search(text)
    assert stamp is not None, "the description was written without its digest"
    at = found[1] + stamp.start(1)
    output[at:at + len(_PLACEHOLDER)] = hashlib.sha256(output).hexdigest().encode()
    return bytes(output)


def read_tflite_description(model: bytes, source: str, verify: bool = True) -> ModelDescription:
    """Read the description from ``.tflite`` bytes; ``source`` names the file in errors.

    With ``verify`` (the default), a stamped file whose bytes do not match its digest is
    refused with ``model file is damaged (digest mismatch ...)``; an unstamped one is read as
    it is. ``verify=False`` reads the description of a damaged or hand-edited file.
    """
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ModelFileError(source, "not a TFLite model (no TFL3 file identifier)")
    try:
        found = _find_description(model)
    except Exception as error:  # a damaged flatbuffer can fail in many ways while being walked
        raise ModelFileError(source, f"damaged TFLite model ({type(error).__name__}: {error})") from error
    if found is None:
        raise ModelFileError(
            source,
            "TFLite model has no pneumocnn description; convert it with `pneumocnn convert` "
            "or pneumocnn.convert(), which embeds one",
        )
    text, start = found
    stamp = _STAMP.search(text)
    if verify:
        _check_digest(model, stamp, start, text, source)
    description = ModelDescription.from_json(text, source)
    if verify and description.sha256 is not None and (
            stamp is None or stamp.group(1).decode() != description.sha256):
        raise ModelFileError(source, f"model file is damaged (its {DIGEST_KEY} field is not the "
                                     "description's last member)")
    return description


def _find_description(model: bytes | bytearray) -> tuple[bytes, int] | None:
    """The description's bytes and their offset in the file, or ``None`` when there is none;
    ``ValueError`` when the flatbuffer is damaged on the way.

    Walks the few tables of the TFLite schema on the way (``Model.metadata``, ``Metadata.name``
    and ``.buffer``, ``Model.buffers``, ``Buffer.data``) by hand, with every offset checked
    against the file's size, so that reading a model file imports neither the schema's
    generated code (slow to import) nor anything else from LiteRT."""
    root = _read(_U32, model, 0)
    metadata = _vector(model, root, _MODEL_METADATA, 4)
    if metadata is None:
        return None
    for entry in _tables(model, metadata):
        name = _vector(model, entry, _METADATA_NAME, 1)
        if name is None or bytes(model[name[0]:name[0] + name[1]]) != METADATA_NAME.encode():
            continue
        buffers = _vector(model, root, _MODEL_BUFFERS, 4)
        field = _field(model, entry, _METADATA_BUFFER)
        index = 0 if field is None else _read(_U32, model, field)
        if buffers is None or index >= buffers[1]:
            raise ValueError(f"the description's buffer {index} is not in the file")
        data = _vector(model, _tables(model, buffers)[index], _BUFFER_DATA, 1)
        if data is None:
            return b"", 0
        start, length = data
        return bytes(model[start:start + length]), start
    return None


# Field numbers in the TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA = 0
_U16, _U32, _I32 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<i")


def _read(kind: struct.Struct, data: bytes | bytearray, at: int) -> int:
    if not 0 <= at <= len(data) - kind.size:
        raise ValueError(f"offset {at} lies outside the file")
    return kind.unpack_from(data, at)[0]


def _field(data: bytes | bytearray, table: int, number: int) -> int | None:
    """Where field ``number`` of the table at ``table`` lies, or ``None`` when it is absent."""
    vtable = table - _read(_I32, data, table)
    slot = 4 + 2 * number
    if slot + 2 > _read(_U16, data, vtable):
        return None
    offset = _read(_U16, data, vtable + slot)
    return table + offset if offset else None


def _vector(data: bytes | bytearray, table: int, number: int, item: int) -> tuple[int, int] | None:
    """``(first item's offset, length)`` of the vector (or string) of ``item``-byte items in
    field ``number`` of the table at ``table``, or ``None`` when the field is absent."""
    field = _field(data, table, number)
    if field is None:
        return None
    start = field + _read(_U32, data, field)
    length = _read(_U32, data, start)
    if start + 4 + length * item > len(data):
        raise ValueError("a vector runs past the end of the file")
    return start + 4, length


def _tables(data: bytes | bytearray, vector: tuple[int, int]) -> list[int]:
    """The offsets of the tables a vector of tables points to."""
    start, length = vector
    return [start + 4 * i + _read(_U32, data, start + 4 * i) for i in range(length)]


def _check_digest(model: bytes, stamp: re.Match | None, start: int, text: bytes,
                  source: str) -> None:
    """Refuse a stamped file whose bytes, digest zeroed, do not hash to the digest."""
    if stamp is None:
        if _NAMELESS_STAMP.search(text):
            raise ModelFileError(source, "model file is damaged (the name of its digest field "
                                         "is damaged)")
        return
    at = start + stamp.start(1)
    view = memoryview(model)
    digest = hashlib.sha256(view[:at])
    digest.update(_PLACEHOLDER.encode())
    digest.update(view[at + len(_PLACEHOLDER):])
    if digest.hexdigest().encode() != stamp.group(1):
        raise ModelFileError(source, "model file is damaged (digest mismatch: its bytes do not "
                                     "hash to the SHA-256 recorded in its description)")


def _is_digest(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


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
    refusing an archive whose model config could run code (see :func:`_refuse_code`) or
    whose members are damaged.

    A ``.keras`` file carries no SHA-256 digest: a zip archive already records a CRC-32 of
    every member (config, weights, description), which catches accidental damage (every burst
    of up to 32 bits, other damage but for one chance in 2**32), and a digest kept inside the
    archive would protect no better against deliberate change. Keras checks a member's CRC only
    when it reads the member to its end, so every member is read and checked here
    (``ZipFile.testzip``) before Keras sees the file: a mismatch is refused as
    ``model file is damaged (CRC-32 mismatch ...)``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            text = _read_member(archive, KERAS_MEMBER, MAX_DESCRIPTION_BYTES, str(path))
            config = _read_member(archive, "config.json", MAX_CONFIG_BYTES, str(path))
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as error:
        raise ModelFileError(str(path), f"not a readable .keras archive ({error})") from error
    if damaged is not None:
        raise ModelFileError(str(path), f"model file is damaged (CRC-32 mismatch in its member "
                                        f"{damaged})")
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
