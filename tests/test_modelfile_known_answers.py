"""Known answers: a model file carries reference inputs and the answers its exporter got for
them; loading runs them and refuses a variant whose answers are off (a CPU whose kernels give
wrong answers never scores X-rays silently), falling back to the next variant of a folder and
saying why; files without them load as before."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TINY_FLOAT, TINY_INT8, XRAYS, real_images

import pneumocnn
from pneumocnn.core.modelfile import (
    KnownAnswers,
    ModelDescription,
    embed_in_tflite,
    read_tflite_description,
)
from pneumocnn.runtime import backends, variants

BUNDLED = REPO / "pneumocnn" / "models"


def with_answers(source: Path, out: Path, data: Path | None = XRAYS) -> Path:
    """``source`` re-stamped with known answers (chosen among coarse copies of ``data``'s
    X-rays, or synthetic images), as ``pneumocnn convert`` writes them; no TensorFlow."""
    return pneumocnn.convert(source, out, representative=data)


def read(path: Path) -> ModelDescription:
    return read_tflite_description(path.read_bytes(), str(path))


def rewritten(path: Path, out: Path, **answers) -> Path:
    """``path`` re-stamped with its known answers changed (``outputs``, ``tolerance``)."""
    description = read(path)
    changed = dataclasses.replace(description.known_answers, **answers)
    out.write_bytes(embed_in_tflite(path.read_bytes(),
                                    dataclasses.replace(description, known_answers=changed)))
    return out


@pytest.fixture
def folder(tmp_path) -> Path:
    """The two tiny variants of one model (int8 and dynamic-range int8), with known answers."""
    models = tmp_path / "models"
    models.mkdir()
    for path in (TINY_INT8, TINY_FLOAT):
        with_answers(path, models / path.name)
    return models


def broken_kernels(monkeypatch, content: bytes, answer: float = 0.9994) -> None:
    """Make LiteRT answer ``answer`` (as a probability) for every input of the model file
    ``content``, as its int8 kernels did under QEMU's SME CPU (issue 28): the interpreter runs,
    its output is wrong. Other model files run as they are."""
    real = backends._interpreter_class()

    class BrokenKernels:
        def __init__(self, model_content: bytes, num_threads: int) -> None:
            self._interpreter = real(model_content=model_content, num_threads=num_threads)
            self._broken = model_content == content

        def __getattr__(self, name):
            return getattr(self._interpreter, name)

        def get_tensor(self, index):
            output = self._interpreter.get_tensor(index)
            tensor = self._interpreter.get_output_details()[0]
            if not self._broken or index != tensor["index"]:
                return output
            if np.dtype(tensor["dtype"]) == np.float32:
                return np.full_like(output, answer)
            scale, zero_point = tensor["quantization"]
            limits = np.iinfo(output.dtype)
            return np.full_like(output, np.clip(round(answer / scale + zero_point),
                                                limits.min, limits.max))

    monkeypatch.setattr(backends, "_interpreter_class", lambda: BrokenKernels)


# ---------------------------------------------------------------------------------------------
# in the file


def test_known_answers_are_compact_and_round_trip_through_the_file(tmp_path):
    path = with_answers(TINY_INT8, tmp_path / "int8.tflite")
    answers = read(path).known_answers
    spec = read(path).preprocessing
    assert len(answers.inputs) == 3 and answers.inputs.shape[1:] == (spec.height // 2, spec.width // 2)
    assert answers.tolerance == 0.05  # int8's
    assert len(json.dumps(answers.to_dict())) < 3 * 2000  # 64 px: well under 2 kB an input
    pixels = answers.pixels(spec.height, spec.width)
    assert pixels.shape == (3, spec.height, spec.width) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[:, ::2, ::2], answers.inputs)
    assert np.array_equal(pixels[:, 1::2, 1::2], answers.inputs)
    assert set(np.unique(answers.inputs)) <= set(range(0, 256, 17))  # 16 grey levels
    # the answers are those the runtime gives for the stored inputs, on real X-ray copies
    model = pneumocnn.load(path)
    assert np.allclose(model.backend.probabilities(pixels), answers.outputs, atol=1e-6)
    again = KnownAnswers.from_dict(json.loads(json.dumps(answers.to_dict())))
    assert np.array_equal(again.inputs, answers.inputs) and again.outputs == answers.outputs
    # they belong to the weights, not to the model: comparisons ignore them, as the digest
    assert read(path) == read(TINY_INT8)


def test_the_answers_are_spread_away_from_0_and_1_where_a_wrong_kernel_shows(tmp_path):
    answers = read(with_answers(BUNDLED / "pneumonia-float16.tflite", tmp_path / "f.tflite",
                                data=None)).known_answers  # the bundled model's own are on X-rays
    assert all(0.05 < p < 0.95 for p in answers.outputs), answers.outputs
    bundled = read(BUNDLED / "pneumonia-int8.tflite").known_answers
    assert min(bundled.outputs) < 0.35 and max(bundled.outputs) > 0.65, bundled.outputs


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a | {"inputs": ["not base64!"]}, "not base64 zlib"),
    (lambda a: a | {"inputs": a["inputs"][:2]}, "one output in \\[0, 1\\] per input"),
    (lambda a: a | {"outputs": [0.5, 1.5, 0.5]}, "one output in \\[0, 1\\] per input"),
    (lambda a: a | {"tolerance": 0}, "tolerance must lie in"),
    (lambda a: a | {"tolerance": "0.05"}, "tolerance must be a number"),
    (lambda a: a | {"size": [7, 7]}, "holds .* pixels, not 49"),
    (lambda a: a | {"size": [32, 31]}, "holds .* pixels, not"),
    (lambda a: {k: v for k, v in a.items() if k != "outputs"}, "must hold size, inputs"),
])
def test_damaged_known_answers_are_refused_when_read(tmp_path, change, message):
    path = with_answers(TINY_FLOAT, tmp_path / "model.tflite")
    data = json.loads(read(path).to_json())
    data["known_answers"] = change(data["known_answers"])
    with pytest.raises(pneumocnn.ModelFileError, match=f"incomplete or invalid.*{message}"):
        ModelDescription.from_json(json.dumps(data), str(path))


def test_answers_that_do_not_tile_the_input_are_refused():
    answers = KnownAnswers(np.zeros((1, 7, 7), np.uint8), (0.5,), 0.01)
    with pytest.raises(ValueError, match="7x7 do not tile a 150x150 input"):
        ModelDescription(known_answers=answers)


def test_a_file_without_known_answers_still_loads():
    """pneumocnn 0.1.0's files and other tools' have none: they are run once on zeros at load,
    as before."""
    assert read(TINY_INT8).known_answers is None
    assert pneumocnn.load(TINY_INT8).predict(real_images("NORMAL", 1)[0]).ok


def test_re_stamping_keeps_the_answers_a_file_has(tmp_path):
    first = with_answers(TINY_INT8, tmp_path / "first.tflite")
    again = pneumocnn.convert(first, tmp_path / "again.tflite", threshold=0.4)
    kept, answers = read(again).known_answers, read(first).known_answers
    assert np.array_equal(kept.inputs, answers.inputs) and kept.outputs == answers.outputs


# ---------------------------------------------------------------------------------------------
# at load


def test_a_file_whose_answers_are_off_is_refused_with_the_reason(tmp_path):
    path = with_answers(TINY_INT8, tmp_path / "int8.tflite")
    outputs = list(read(path).known_answers.outputs)
    outputs[1] = min(outputs[1] + 0.2, 1.0)
    wrong = rewritten(path, tmp_path / "wrong.tflite", outputs=tuple(outputs))
    with pytest.raises(pneumocnn.ModelFileError,
                       match=r"wrong.tflite: refused on this CPU: known-answer check failed: "
                             r"reference input 2 of 3 scored 0\.\d{6} here against 0\.\d{6} when "
                             r"the file was made \(tolerance 0\.05\)"):
        pneumocnn.load(wrong)


def test_an_answer_within_the_tolerance_is_accepted(tmp_path):
    path = with_answers(TINY_FLOAT, tmp_path / "dynamic.tflite")
    answers = read(path).known_answers
    near = tuple(min(p + answers.tolerance / 2, 1.0) for p in answers.outputs)
    assert pneumocnn.load(rewritten(path, tmp_path / "near.tflite", outputs=near))


def test_a_folder_falls_back_to_the_next_variant_and_says_why(folder, tmp_path, caplog):
    perturbed = read(folder / TINY_INT8.name).known_answers
    rewritten(folder / TINY_INT8.name, folder / TINY_INT8.name,
              outputs=tuple(1.0 - p for p in perturbed.outputs))
    with caplog.at_level(logging.WARNING, logger="pneumocnn"):
        model = pneumocnn.load(folder)
    assert model.variant.variant == "dynamic-int8"
    assert model.variant.candidates == ("dynamic-int8", "int8")
    assert "int8 left out: refused on this CPU: known-answer check failed" in model.variant.reason
    assert set(model.variant.refused) == {"int8"}
    assert "the int8 variant is left out and the next one used" in caplog.text
    assert str(folder / TINY_INT8.name) in caplog.text
    assert model.predict(real_images("PNEUMONIA", 1)[0]).ok
    # asked for by name, it is refused with an error, not replaced
    with pytest.raises(pneumocnn.ModelFileError, match="known-answer check failed"):
        pneumocnn.load(folder, variant="int8")
    # the refusal is remembered with the choice and said again on the next load
    again = pneumocnn.load(folder)
    assert again.variant.variant == "dynamic-int8" and "int8 left out" in again.variant.reason


def test_a_cpu_whose_kernels_answer_wrongly_falls_back_to_the_variant_that_answers_right(
        folder, monkeypatch, caplog):
    """The QEMU SME case of issue 28, simulated: LiteRT runs the int8 file and answers 0.9994
    for every input; the float-input variant answers right and is used."""
    broken_kernels(monkeypatch, (folder / TINY_INT8.name).read_bytes())
    with caplog.at_level(logging.WARNING, logger="pneumocnn"):
        model = pneumocnn.load(folder)
    assert model.variant.variant == "dynamic-int8"
    assert "int8 left out" in model.variant.reason and "scored 0.99" in model.variant.reason
    assert "known-answer check failed" in caplog.text
    with pytest.raises(pneumocnn.ModelFileError, match="known-answer check failed"):
        pneumocnn.load(folder / TINY_INT8.name)


def test_a_remembered_choice_that_now_answers_wrongly_is_replaced(folder, monkeypatch):
    """A choice remembered on this machine is checked at every load: when it fails (a runtime
    or CPU change the cache key does not see), the next variant is timed and used."""
    calls = variants.ROUNDS * variants.CALLS_PER_ROUND
    monkeypatch.setattr(variants, "_time", lambda *args: {"int8": [1.0] * calls,
                                                          "dynamic-int8": [2.0] * calls})
    assert pneumocnn.load(folder).variant.variant == "int8"
    broken_kernels(monkeypatch, (folder / TINY_INT8.name).read_bytes())
    model = pneumocnn.load(folder)
    assert model.variant.variant == "dynamic-int8"
    assert "the only variant that runs here" in model.variant.reason


def test_a_folder_where_no_variant_answers_right_is_refused(folder, monkeypatch):
    for path in folder.glob("*.tflite"):
        answers = read(path).known_answers
        rewritten(path, path, outputs=tuple(1.0 - p for p in answers.outputs))
    with pytest.raises(pneumocnn.ModelFileError,
                       match="no variant can run on this CPU: .*int8: refused on this CPU"):
        pneumocnn.load(folder)


def test_a_single_variant_that_answers_wrongly_is_refused(folder, tmp_path, monkeypatch):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(folder / TINY_FLOAT.name, single)
    broken_kernels(monkeypatch, (single / TINY_FLOAT.name).read_bytes(), answer=0.0)
    with pytest.raises(pneumocnn.ModelFileError, match="known-answer check failed"):
        pneumocnn.load(single)


# ---------------------------------------------------------------------------------------------
# the bundled models and the exporter


def test_every_bundled_variant_carries_known_answers_that_pass_here():
    for path in sorted(BUNDLED.glob("*.tflite")):
        answers = read(path).known_answers
        assert answers is not None and len(answers.inputs) == 3, path.name
        quantization = read(path).info["quantization"]
        assert answers.tolerance == {"int8": 0.05, "dynamic-int8": 5e-3, "float16": 1e-3}[quantization]
        assert pneumocnn.load(path).variant is None  # loaded: its answers passed


@pytest.mark.training
def test_exported_variants_share_reference_inputs_from_representative_xrays(tiny_run):
    files = tiny_run.tflite_models
    first = read(files["float32"]).known_answers
    for quantization, path in files.items():
        answers = read(path).known_answers
        assert np.array_equal(answers.inputs, first.inputs), quantization
        assert pneumocnn.load(path)  # its own answers pass here
    # the float variants answer the same inputs alike; int8 within its tolerance
    assert np.allclose(read(files["float16"]).known_answers.outputs, first.outputs, atol=1e-3)
    assert np.allclose(read(files["int8"]).known_answers.outputs, first.outputs, atol=0.1)


@pytest.mark.training
def test_int8_exports_keep_the_one_channel_first_block_in_float(tiny_run):
    """XNNPACK's int8 convolution over one input channel is slow (docs/speed.md): an int8 export
    runs its first convolution and pooling in float and quantizes after them; the rest is int8."""
    from benchmarks.operators import operators

    ops = [(op["op"], op["types"]) for op in operators(tiny_run.tflite_models["int8"].read_bytes())]
    assert ops[:3] == [("CONV_2D", "float32 -> float32"), ("MAX_POOL_2D", "float32 -> float32"),
                       ("QUANTIZE", "float32 -> int8")]
    assert ("CONV_2D", "int8 -> int8") in ops[3:]
    bundled = operators((BUNDLED / "pneumonia-int8.tflite").read_bytes())
    assert [op["op"] for op in bundled[:3]] == ["CONV_2D", "MAX_POOL_2D", "QUANTIZE"]
