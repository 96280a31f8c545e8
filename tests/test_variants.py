"""pneumocnn.runtime.variants: ``load(folder)`` picks the fastest variant of one model on this
CPU, says which and why, remembers it, and takes ``variant=`` to force one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, TINY_FLOAT, TINY_INT8, real_images

import pneumocnn
from pneumocnn.runtime import variants

BUNDLED = REPO / "pneumocnn" / "models"


@pytest.fixture
def folder(tmp_path) -> Path:
    """The two shipped tiny variants of one model (int8 and dynamic-range int8)."""
    models = tmp_path / "models"
    models.mkdir()
    for path in (TINY_INT8, TINY_FLOAT):
        shutil.copy(path, models)
    return models


@pytest.fixture
def steady_timing(monkeypatch):
    """Timings that always choose int8 in both halves of the rounds (a quiet CPU)."""
    calls = variants.ROUNDS * variants.CALLS_PER_ROUND
    monkeypatch.setattr(variants, "_time", lambda *args: {"int8": [1.0] * calls,
                                                          "dynamic-int8": [2.0] * calls})


def test_a_folder_loads_one_of_its_variants_and_says_why(folder, variant_cache):
    model = pneumocnn.load(folder)
    assert model.variant.candidates == ("dynamic-int8", "int8")
    assert model.variant.variant in model.variant.candidates
    assert set(model.variant.timings_ms) == {"dynamic-int8", "int8"}
    assert all(ms > 0 for ms in model.variant.timings_ms.values())
    assert Path(model.path).parent == folder
    assert model.description.info["quantization"] == model.variant.variant
    assert "fastest here, timed at load" in repr(model)
    image = real_images("PNEUMONIA", 1)[0]
    assert model.predict(image).label in model.labels
    remembered = json.loads((variant_cache / "variants.json").read_text())
    assert [entry["variant"] for entry in remembered.values()] == [model.variant.variant]


def test_the_choice_is_remembered_and_not_timed_again(folder, monkeypatch, steady_timing):
    first = pneumocnn.load(folder)

    def no_timing(*args):
        raise AssertionError("timed again")

    monkeypatch.setattr(variants, "_time", no_timing)
    again = pneumocnn.load(folder)
    assert again.variant.variant == first.variant.variant
    assert again.variant.timings_ms == first.variant.timings_ms
    assert "when timed on" in again.variant.reason


def test_another_thread_count_is_another_choice(folder, monkeypatch, steady_timing):
    pneumocnn.load(folder, threads=1)
    timed = []
    steady = variants._time
    monkeypatch.setattr(variants, "_time", lambda *args: timed.append(1) or steady(*args))
    pneumocnn.load(folder, threads=1)
    assert not timed  # remembered for one thread
    pneumocnn.load(folder, threads=2)
    assert timed


@pytest.mark.parametrize(("timings", "chosen"), [
    ({"int8": 2.0, "dynamic-int8": 1.0}, "dynamic-int8"),  # clearly faster
    ({"int8": 1.0, "dynamic-int8": 2.0}, "int8"),
    ({"int8": 1.03, "dynamic-int8": 1.0}, "dynamic-int8"),  # a near tie: the smaller file
    ({"int8": 1.0, "dynamic-int8": 1.03}, "dynamic-int8"),
])
def test_the_fastest_wins_and_the_smaller_file_among_near_ties(folder, monkeypatch, timings,
                                                               chosen):
    assert TINY_FLOAT.stat().st_size < TINY_INT8.stat().st_size
    samples = {name: [ms] * variants.ROUNDS * variants.CALLS_PER_ROUND for name, ms in timings.items()}
    monkeypatch.setattr(variants, "_time", lambda *args: samples)
    assert pneumocnn.load(folder).variant.variant == chosen


def test_an_unsteady_choice_says_so_and_is_remembered_all_the_same(folder, monkeypatch,
                                                                   variant_cache):
    """On a busy CPU the two halves of the rounds may choose differently: the reason says so,
    and the choice is still remembered, so that later runs of the same command on this machine
    give the same answers."""
    half = variants.ROUNDS * variants.CALLS_PER_ROUND // 2
    samples = {"int8": [1.0] * half + [3.0] * half, "dynamic-int8": [2.0] * (2 * half)}
    timings = []
    monkeypatch.setattr(variants, "_time", lambda *args: timings.append(1) or samples)
    model = pneumocnn.load(folder)
    assert "unsteady" in model.variant.reason
    assert len(timings) == 1 + variants.RETIMINGS
    steady = {"int8": [1.0] * (2 * half), "dynamic-int8": [2.0] * (2 * half)}
    monkeypatch.setattr(variants, "_time", lambda *args: steady)
    assert pneumocnn.load(folder).variant.variant == model.variant.variant


def test_an_unsteady_timing_is_taken_again_and_the_choice_made_on_all_rounds(folder,
                                                                           monkeypatch):
    """A burst of load in one half of the rounds (int8 three times slower there) would have
    chosen dynamic-int8; timed again on a quiet CPU, int8 wins on all the rounds together."""
    half = variants.ROUNDS * variants.CALLS_PER_ROUND // 2
    burst = {"int8": [1.0] * half + [3.0] * half, "dynamic-int8": [1.5] * (2 * half)}
    quiet = {"int8": [1.0] * (2 * half), "dynamic-int8": [1.5] * (2 * half)}
    timings = iter([burst, quiet])
    monkeypatch.setattr(variants, "_time", lambda *args: next(timings))
    model = pneumocnn.load(folder)
    assert model.variant.variant == "int8"
    assert "unsteady" not in model.variant.reason
    assert model.variant.timings_ms == {"int8": 1.0, "dynamic-int8": 1.5}


def test_variant_forces_one_and_an_absent_one_is_named(folder):
    model = pneumocnn.load(folder, variant="int8")
    assert Path(model.path).name == TINY_INT8.name
    assert model.variant.reason == "asked for: variant='int8'"
    with pytest.raises(ValueError, match="no 'float16' variant; it has dynamic-int8, int8"):
        pneumocnn.load(folder, variant="float16")
    assert pneumocnn.load(TINY_INT8, variant="int8").variant is None
    with pytest.raises(ValueError, match="is the int8 variant, not 'float16'"):
        pneumocnn.load(TINY_INT8, variant="float16")


def test_a_damaged_or_unwritable_cache_costs_only_the_timing(folder, variant_cache,
                                                            steady_timing):
    variant_cache.mkdir()
    (variant_cache / "variants.json").write_text("{not json")
    assert pneumocnn.load(folder).variant.timings_ms
    assert json.loads((variant_cache / "variants.json").read_text())  # rewritten
    entries = json.loads((variant_cache / "variants.json").read_text())
    for entry in entries.values():
        entry["timings_ms"] = {"int8": "fast"}  # valid JSON, not a timing
    (variant_cache / "variants.json").write_text(json.dumps(entries))
    assert pneumocnn.load(folder).variant.timings_ms == {"int8": 1.0, "dynamic-int8": 2.0}
    (variant_cache / "variants.json").unlink()
    variant_cache.rmdir()
    variant_cache.write_text("a file where the cache folder should be")
    assert pneumocnn.load(folder).predict(real_images("NORMAL", 1)[0]).ok


def test_a_folder_of_different_models_or_of_none_is_refused(folder, tmp_path):
    shutil.copy(TINY_INT8, folder / "copy.tflite")
    with pytest.raises(pneumocnn.ModelFileError, match="two int8 models"):
        pneumocnn.load(folder)
    (folder / "copy.tflite").unlink()
    (folder / TINY_INT8.name).unlink()
    shutil.copy(BUNDLED / "pneumonia-int8.tflite", folder)
    with pytest.raises(pneumocnn.ModelFileError, match="holds files of different models"):
        pneumocnn.load(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(pneumocnn.ModelFileError, match="holds no .tflite model file"):
        pneumocnn.load(empty)


def test_the_bundled_models_load_the_same_answer_in_every_variant():
    """The default load() takes one of the bundled variants; each agrees with the others in
    label on the shipped X-rays (the full agreement figures are in the model card)."""
    default = pneumocnn.load()
    names = default.variant.candidates
    assert default.variant.variant in names
    images = real_images("NORMAL", 24) + real_images("PNEUMONIA", 24)
    labels = {name: [r.label for r in pneumocnn.load(variant=name).predict(images)]
              for name in names}
    for name in names:
        agree = sum(a == b for a, b in zip(labels[name], labels[default.variant.variant], strict=True))
        assert agree >= len(images) - 1, name
