"""The aarch64 job's comparison (``.ci/arm_answers.py``): it fails on the answers it must fail on.

The job itself runs under QEMU in ``.ci/aarch64``; here its Python side runs on this machine's
real answers (the bundled variants on real X-rays), which are then altered as a broken ARM
kernel would alter them.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
from helpers import XRAYS

ROOT = Path(__file__).resolve().parents[1]


def _job():
    spec = importlib.util.spec_from_file_location("arm_answers", ROOT / ".ci" / "arm_answers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


job = _job()


@pytest.fixture(scope="module")
def reference() -> dict:
    """This machine's answers to six real X-rays, every bundled variant."""
    xrays = sorted(str(path) for path in XRAYS.rglob("*.jpeg"))[::8]
    return job.answers(xrays, pick=False)


def test_the_same_answers_pass(reference):
    rows, failures = job.compare(reference, {"same": copy.deepcopy(reference)})
    assert failures == []
    assert {name: row["max_abs_difference"] for name, row in rows["same"].items()} == {
        name: 0.0 for name in reference["variants"]}
    assert all(row["labels_equal"] for row in rows["same"].values())


def test_an_answer_beyond_the_tolerance_fails(reference):
    other = copy.deepcopy(reference)
    variant = other["variants"]["float16"]
    source = min(variant["answers"])
    answer = variant["answers"][source]
    answer["probability"] += 2 * variant["tolerance"] * (1 if answer["probability"] < 0.5 else -1)
    rows, failures = job.compare(reference, {"broken": other})
    assert len(failures) == 1 and failures[0].startswith(f"broken float16: {source} scored")
    assert rows["broken"]["float16"]["worst_xray"] == source


def test_a_label_that_differs_fails_within_the_tolerance(reference):
    other = copy.deepcopy(reference)
    answer = next(iter(other["variants"]["int8"]["answers"].values()))
    answer["label"] = "PNEUMONIA" if answer["label"] == "NORMAL" else "NORMAL"
    rows, failures = job.compare(reference, {"flipped": other})
    assert failures == ["flipped int8: 1 labels differ from x86-64's "
                        f"({next(iter(other['variants']['int8']['answers']))})"]
    assert rows["flipped"]["int8"]["labels_equal"] is False


def test_a_refused_variant_is_reported_and_none_accepted_fails(reference):
    refused = {"accepted": False, "refused": "refused on this CPU: known-answer check failed"}
    one = copy.deepcopy(reference)
    one["variants"]["int8"] = refused
    rows, failures = job.compare(reference, {"one-refused": one})
    assert failures == [] and rows["one-refused"]["int8"] == refused
    every = copy.deepcopy(reference)
    every["variants"] = {name: refused for name in every["variants"]}
    _, failures = job.compare(reference, {"all-refused": every})
    assert failures == ["all-refused: load() accepts no variant"]


def test_the_features_are_named_as_linux_names_them():
    # AT_HWCAP and AT_HWCAP2 as QEMU 7.2 gave them to a program on -cpu cortex-a76 and max
    assert job.features(0x119ffb, 0) == [
        "fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
        "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"]
    on_max = job.features(0xecfffffb, 0x7f877fff)
    assert {"sve", "sve2", "i8mm", "bf16", "sme", "smei8i32"} <= set(on_max)
    assert "dgh" not in on_max and "evtstrm" not in on_max
