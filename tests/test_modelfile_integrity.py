"""Model-file integrity (issue 11): a ``.tflite`` file carries the SHA-256 of its own bytes in
its description and is refused at load when a byte of it has changed; files without a digest
load as before; ``.keras`` files are checked against their zip CRC-32s.

Only the tests marked ``training`` need TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pneumocnn
from pneumocnn.core.modelfile import (
    ModelDescription,
    _find_description,
    embed_in_tflite,
    read_keras_description,
    read_tflite_description,
)
from pneumocnn.core.preprocessing import Preprocessing

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "pneumocnn" / "models" / "pneumonia-int8.tflite"
EXAMPLES = REPO / "examples" / "xrays"
SHIPPED = sorted([*(REPO / "pneumocnn" / "models").glob("*.tflite"),
                  *(REPO / "tests" / "data").glob("*.tflite")])
MISMATCH = "model file is damaged (digest mismatch"
STAMP = re.compile(rb',\n "sha256": "[0-9a-f]{64}"')


def description_span(content: bytes) -> tuple[int, int]:
    """Where the description JSON lies in a ``.tflite`` file: ``(start, end)``."""
    text, start = _find_description(content)
    return start, start + len(text)


def unstamped(content: bytes) -> bytes:
    """The same file as pneumocnn 0.1.0 wrote it but for trailing spaces in the description:
    the stamp blanked out in place (the same length, so nothing else moves)."""
    start, end = description_span(content)
    text = content[start:end]
    blank = STAMP.sub(lambda m: b" " * len(m.group()), text)
    assert blank != text
    return content[:start] + blank + content[end:]


def recorded_digest_checks_out(content: bytes) -> bool:
    """Recompute the digest the way the module docstring states it, independently of the
    reader: the file's SHA-256 with the 64 digits of the stamp set to ``0``."""
    digest = read_tflite_description(content, "m", verify=False).sha256
    at = content.rindex(digest.encode())
    zeroed = content[:at] + b"0" * 64 + content[at + 64:]
    return hashlib.sha256(zeroed).hexdigest() == digest


def outputs(path: Path) -> list[float]:
    return [r.probability for r in pneumocnn.load(path).predict(sorted(EXAMPLES.glob("*.jpeg")))]


@pytest.fixture(scope="module")
def bundled() -> bytes:
    return BUNDLED.read_bytes()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_tflite_carries_a_digest_that_checks_out(path):
    content = path.read_bytes()
    description = read_tflite_description(content, str(path))
    assert description.sha256 is not None, f"{path} is not stamped: pneumocnn convert it onto itself"
    assert recorded_digest_checks_out(content)
    assert pneumocnn.load(path).description.sha256 == description.sha256


def test_bundled_model_keeps_its_description_and_provenance(bundled):
    description = read_tflite_description(bundled, "bundled")
    provenance = description.info["provenance"]
    assert provenance["created"] == "2026-12-02T14:34:12+00:00"  # the export of this file
    assert (provenance["train_images"], provenance["validation_images"]) == (4693, 523)
    data = json.loads(description.to_json())
    assert list(data)[-1] == "sha256" and "sha256" not in description.info
    assert data["version"] == 2  # the calibration bias; the digest raises no version


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(position=st.integers(0, BUNDLED.stat().st_size - 1), change=st.integers(1, 255))
@example(position=0, change=1)  # the root table offset
@example(position=5, change=1)  # the TFL3 file identifier
@example(position=BUNDLED.stat().st_size - 1, change=0x80)  # the last byte
def test_a_changed_byte_anywhere_is_refused(bundled, tmp_path_factory, position, change):
    """Any one byte changed, in the header, the graph, the weights or the description, is
    refused at load with a ModelFileError naming the file."""
    path = tmp_path_factory.getbasetemp() / "flipped.tflite"
    damaged = bytearray(bundled)
    damaged[position] ^= change
    path.write_bytes(damaged)
    with pytest.raises(pneumocnn.ModelFileError) as caught:
        pneumocnn.load(path)
    assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: ")
    assert any(kind in caught.value.reason for kind in (
        "model file is damaged",  # the digest (nearly every position)
        "not a TFLite model",  # the file identifier
        "damaged TFLite model",  # a flatbuffer offset the reader cannot follow
        "no pneumocnn description",  # the metadata entry's name or offsets
        "not valid JSON",  # the stamp's own punctuation
    )), caught.value.reason


def test_weights_graph_and_description_damage_is_a_digest_mismatch(bundled, tmp_path):
    start, end = description_span(bundled)
    text = bundled[start:end]
    places = {
        "a weight": len(bundled) // 2,  # inside the largest weight buffers
        "the graph": len(bundled) - 200,
        "the threshold in the description": start + text.index(b'"threshold": 0.') + 16,
        "a label in the description": start + text.index(b"PNEUMONIA"),
        "the provenance in the description": start + text.index(b'"created": "2026-') + 12,
        # a hex digit of the digest that stays one when its lowest bit flips (not a or f)
        "the digest itself": start + max(text.rindex(digit) for digit in
                                         (b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8",
                                          b"9", b"b", b"c", b"d", b"e")),
    }
    for where, position in places.items():
        damaged = bytearray(bundled)
        damaged[position] ^= 0x01
        path = tmp_path / "damaged.tflite"
        path.write_bytes(damaged)
        with pytest.raises(pneumocnn.ModelFileError, match=re.escape(MISMATCH)) as caught:
            pneumocnn.load(path)
        assert str(caught.value).startswith(f"{path}: model file is damaged"), where


def test_a_damaged_digest_field_is_refused_not_skipped(bundled, tmp_path):
    """Damage to the stamp's own name or spacing must not turn the file into an unstamped
    one that loads unchecked."""
    start, end = description_span(bundled)
    at = start + bundled[start:end].rindex(b'"sha256"')
    for offset, value, message in [(1, b"t", "name of its digest field"),
                                   (9, b"\t", "not the description's last member"),
                                   (12, b"g", "not 64 lowercase hex digits")]:
        damaged = bytearray(bundled)
        damaged[at + offset:at + offset + 1] = value
        path = tmp_path / "damaged.tflite"
        path.write_bytes(damaged)
        with pytest.raises(pneumocnn.ModelFileError, match=message):
            pneumocnn.load(path)


def test_an_unstamped_file_still_loads_and_answers_the_same(bundled, tmp_path):
    old = tmp_path / "unstamped.tflite"
    old.write_bytes(unstamped(bundled))
    model = pneumocnn.load(old)
    assert model.description.sha256 is None
    assert model.description == read_tflite_description(bundled, "bundled")
    assert outputs(old) == outputs(BUNDLED)
    result = subprocess.run([sys.executable, "-m", "pneumocnn", "info", str(old)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "digest: none" in result.stdout, result.stderr


def test_the_digest_round_trips(bundled):
    description = read_tflite_description(bundled, "bundled")
    restamped = embed_in_tflite(bundled, description)
    assert restamped == bundled  # stamping is deterministic: re-stamping changes nothing
    from_old = embed_in_tflite(unstamped(bundled), description)
    assert from_old == bundled
    again = read_tflite_description(from_old, "again")
    assert again.sha256 == description.sha256 and again == description
    assert recorded_digest_checks_out(from_old)
    text = description.to_json()
    assert ModelDescription.from_json(text, "m").sha256 == description.sha256
    changed = embed_in_tflite(bundled, description.with_info(note="changed"))
    assert read_tflite_description(changed, "changed").sha256 != description.sha256
    assert recorded_digest_checks_out(changed)


def test_embedding_reuses_the_old_description_buffer(bundled):
    """Re-embedding replaces the description in place: no orphan buffer, no growth."""
    from ai_edge_litert import schema_py_generated as schema

    def buffers(content: bytes) -> int:
        return len(schema.ModelT.InitFromPackedBuf(bytearray(content), 0).buffers)

    twice = embed_in_tflite(embed_in_tflite(bundled, ModelDescription(
        preprocessing=Preprocessing(150, 150, 3))), read_tflite_description(bundled, "bundled"))
    assert buffers(twice) == buffers(bundled) and twice == bundled


def test_restamp_command_brings_an_old_file_to_the_bundled_bytes(bundled, tmp_path):
    """`pneumocnn convert FILE.tflite --out FILE.tflite` (no TensorFlow) stamps an old file,
    keeping its weights and description; it refuses a damaged stamped file and a change of
    quantization."""
    from pneumocnn.cli import main

    path = tmp_path / "model.tflite"
    path.write_bytes(unstamped(bundled))
    assert main(["convert", str(path), "--out", str(path)]) == 0
    assert path.read_bytes() == bundled
    damaged = bytearray(bundled)
    damaged[len(bundled) // 2] ^= 0x01
    path.write_bytes(damaged)
    assert main(["convert", str(path), "--out", str(tmp_path / "blessed.tflite")]) == 2
    assert not (tmp_path / "blessed.tflite").exists()
    with pytest.raises(ValueError, match="not re-quantized"):
        pneumocnn.convert(BUNDLED, tmp_path / "f16.tflite", quantization="float16")
    pneumocnn.convert(BUNDLED, tmp_path / "t.tflite", threshold=0.5)
    assert pneumocnn.load(tmp_path / "t.tflite").threshold == 0.5


def test_a_damaged_keras_member_is_refused_by_its_crc(tmp_path):
    """A .keras file carries no digest; every member's CRC-32 is checked at load (no
    TensorFlow is needed to refuse it)."""
    path = tmp_path / "model.keras"
    weights = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", json.dumps({"module": "keras", "class_name": "Model"}))
        archive.writestr("model.weights.h5", weights)
        archive.writestr("pneumocnn.json", ModelDescription().to_json())
    assert read_keras_description(path).sha256 is None
    content = bytearray(path.read_bytes())
    content[content.index(weights[:64]) + 1000] ^= 0x01
    path.write_bytes(content)
    with pytest.raises(pneumocnn.ModelFileError, match=r"damaged \(CRC-32 mismatch in its "
                                                        r"member model.weights.h5\)"):
        pneumocnn.load(path)


@pytest.mark.training
def test_training_export_stamps_its_tflite_files():
    import keras

    from pneumocnn.training.export import to_tflite

    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    description = ModelDescription(preprocessing=Preprocessing(16, 16, 3))
    representative = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    for quantization in ("float32", "int8"):
        content = to_tflite(model, description, quantization, representative)
        stamped = read_tflite_description(content, quantization)
        assert stamped.sha256 is not None and recorded_digest_checks_out(content)
        assert stamped == description.with_info(quantization=quantization)


def flip_figures(model: bytes, folder: Path, flips: int, seed: int,
                 crashes: bool = False) -> dict[str, int]:
    """The byte-overwrite experiment of RELIABILITY.md ("Damaged model files, in bulk":
    ``flips`` copies with 1-8 random bytes overwritten, each loaded in a subprocess and asked
    for one answer), counted by outcome and by the kind of refusal message; with ``crashes``,
    a copy that crashes LiteRT is counted, not a failure."""
    from test_backends import load_in_subprocess, tflite_variants

    variants = tflite_variants(model, truncations=0, flips=flips, randoms=0, seed=seed)
    paths = []
    for index, (_, content) in enumerate(variants):
        paths.append(folder / f"{index:05d}.tflite")
        paths[-1].write_bytes(content)
    (folder / "original.tflite").write_bytes(model)
    outcomes = load_in_subprocess([folder / "original.tflite", *paths], crashes)
    expected = outcomes.pop("original.tflite")[1]
    figures: dict[str, int] = {}
    for outcome, value in outcomes.values():
        assert outcome in ("loaded", "refused", "crashed"), (outcome, value)
        if outcome == "crashed":
            kind = "crashed LiteRT"
        elif outcome == "loaded":
            kind = "loaded, same answer" if value == expected else "loaded, other answer"
        else:
            kind = "refused: " + (re.match(r"model file is damaged \([^:)]*", value)
                                  or re.match(r"[^(;:]*", value)).group().strip()
        figures[kind] = figures.get(kind, 0) + 1
    return dict(sorted(figures.items(), key=lambda item: -item[1]))


@pytest.mark.slow
def test_thousands_of_overwritten_bundled_models(bundled, tmp_path):
    """RELIABILITY.md's 5,000 copies with 1-8 bytes overwritten (seed 1), on the bundled model
    as stamped and, for comparison, on the same file without its stamp (whose damaged bytes
    reach LiteRT, which can crash on them: counted, not a failure)."""
    stamped = flip_figures(bundled, tmp_path, flips=5000, seed=1)
    (tmp_path / "old").mkdir()
    old = flip_figures(unstamped(bundled), tmp_path / "old", flips=5000, seed=1, crashes=True)
    print(f"\nstamped: {stamped}\nunstamped: {old}")
    from test_backends import tflite_variants

    unchanged = sum(content == bundled for _, content in tflite_variants(
        bundled, truncations=0, flips=5000, randoms=0, seed=1))  # bytes overwritten by themselves
    assert sum(stamped.values()) == 5000 and "loaded, other answer" not in stamped
    assert stamped.get("loaded, same answer", 0) == unchanged  # 3 for the file of 2026-12-02


def single_byte_figures(model: bytes, change: int) -> dict[str, int]:
    """Every position of ``model`` with ``change`` XORed into its byte, read (not run) by
    :func:`read_tflite_description` in this process: counts by refusal kind, and ``passed``."""
    figures: dict[str, int] = {}
    data = bytearray(model)
    for position in range(len(model)):
        data[position] ^= change
        try:
            read_tflite_description(bytes(data), "m")
            kind = "passed"
        except pneumocnn.ModelFileError as error:
            kind = (re.match(r"model file is damaged \([^:)]*", error.reason)
                    or re.match(r"[^(;:]*", error.reason)).group().strip()
        figures[kind] = figures.get(kind, 0) + 1
        data[position] ^= change
    return dict(sorted(figures.items(), key=lambda item: -item[1]))


@pytest.mark.slow
@pytest.mark.parametrize("change", [0xFF, 0x01])
def test_every_position_of_the_bundled_model_is_checked(bundled, change):
    """Every one-byte change of the bundled int8 model (each bit inverted, or the lowest
    bit) is refused before LiteRT sees the bytes (about a minute each)."""
    figures = single_byte_figures(bundled, change)
    print(f"\nXOR {change:#04x}: {figures}")
    assert "passed" not in figures and sum(figures.values()) == len(bundled)
