"""Fuzzing the decode + preprocess path with hypothesis: random bytes, damaged images of every
supported format, and arbitrary numpy arrays. Each case must give a valid model input or an
``InputError`` naming the input: no crash, no other exception, no hang, bounded memory.

A short run is part of the normal suite; the 10,000-case run is ``-m slow`` (it runs this file
as a script in a fresh process, to measure that process's peak memory)::

    python tests/test_preprocessing_fuzz.py 10000
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import time
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from pneumocnn.core.errors import InputError
from pneumocnn.core.preprocessing import Preprocessing, preprocess, source_name

SPEC = Preprocessing(64, 64, 3)
SLOWEST_CASE_SECONDS = 5.0


def _seeds() -> dict[str, bytes]:
    """Small valid images in every format and mode the decoder meets, to be damaged."""
    ramp = (np.add.outer(np.arange(40), np.arange(48)) * 3 % 256).astype(np.uint8)
    gray = Image.fromarray(ramp)
    exif = Image.Exif()
    exif[0x0112] = 6
    images = {
        "png": (gray, "PNG", {}),
        "png-16": (Image.fromarray(ramp.astype(np.uint16) * 257), "PNG", {}),
        "png-palette": (gray.convert("P"), "PNG", {"transparency": 3}),
        "png-la": (gray.convert("LA"), "PNG", {}),
        "png-rgba": (gray.convert("RGBA"), "PNG", {}),
        "jpeg": (gray, "JPEG", {}),
        "jpeg-rgb-progressive": (gray.convert("RGB"), "JPEG", {"progressive": True}),
        "jpeg-cmyk": (gray.convert("CMYK"), "JPEG", {}),
        "jpeg-exif": (gray, "JPEG", {"exif": exif}),
        "gif-animated": (gray, "GIF", {"save_all": True, "append_images": [gray.rotate(90)]}),
        "tiff-frames": (gray, "TIFF", {"save_all": True, "append_images": [gray]}),
        "tiff-deflate": (gray.convert("RGB"), "TIFF", {"compression": "tiff_deflate"}),
        "tiff-float": (Image.fromarray(ramp.astype(np.float32) / 255), "TIFF", {}),
        "bmp": (gray, "BMP", {}),
        "webp": (gray, "WEBP", {}),
        "ppm": (gray, "PPM", {}),
    }
    seeds = {}
    for name, (image, fmt, params) in images.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **params)
        seeds[name] = buffer.getvalue()
    return seeds


SEEDS = _seeds()
EDGE_WORDS = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
              b"\x00\x00\xff\xff", b"\x00\x01\x00\x00"]


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image with 1-4 damages: byte changes, an extreme 32-bit word (sizes and offsets
    in headers), an insertion, a deletion, or a truncation."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        how = draw(st.sampled_from(["byte", "word", "insert", "delete", "truncate"]))
        if how == "byte":
            data[where : where + 1] = bytes([draw(st.integers(0, 255))])
        elif how == "word":
            data[where : where + 4] = draw(st.sampled_from(EDGE_WORDS))
        elif how == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif how == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            del data[where:]
    return bytes(data)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16,
                           np.float32, np.float64, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24),
    elements={"allow_nan": True, "allow_infinity": True},
)
FUZZ_INPUTS = st.one_of(
    damaged_images(),
    damaged_images(),
    damaged_images(),
    st.binary(max_size=2048),
    st.binary(max_size=64).map(lambda tail: SEEDS["png"][:16] + tail),  # a PNG header, then junk
    ARRAYS,
)


def check_one(source) -> str:
    """Preprocess one fuzz input; return ``"scored"`` or ``"refused"``, or fail the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on some damaged files, as it should
            result = preprocess(source, SPEC)
    except InputError as error:
        assert error.source == source_name(source) and error.reason
        return "refused"
    assert result.shape == SPEC.input_shape and result.dtype == np.float32
    assert np.isfinite(result).all() and result.min() >= 0.0 and result.max() <= 1.0
    return "scored"


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, not ``ru_maxrss``: a child
    started from a big process (pytest with TensorFlow) inherits the parent's ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fuzz(examples: int) -> dict:
    """Run ``examples`` hypothesis cases; return the outcome counts and the slowest case."""
    outcomes: Counter[str] = Counter()
    slowest = 0.0

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(FUZZ_INPUTS)
    def case(source) -> None:
        nonlocal slowest
        started = time.perf_counter()
        outcomes[check_one(source)] += 1
        slowest = max(slowest, time.perf_counter() - started)

    case()
    return {"cases": sum(outcomes.values()), **outcomes, "slowest_case_seconds": round(slowest, 3)}


def test_fuzz_decode_and_preprocess_short():
    started = time.monotonic()
    figures = run_fuzz(500)
    assert figures["cases"] >= 450, figures  # hypothesis skips the duplicates it generates
    assert figures["scored"] > 0 and figures["refused"] > 0
    assert figures["slowest_case_seconds"] < SLOWEST_CASE_SECONDS
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_fuzz_decode_and_preprocess_10000_cases():
    result = subprocess.run([sys.executable, __file__, "10000"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    print(figures)
    assert figures["cases"] >= 10_000
    assert figures["slowest_case_seconds"] < SLOWEST_CASE_SECONDS
    assert figures["peak_rss_mb"] < 2048  # bounded by PIL.Image.MAX_IMAGE_PIXELS


if __name__ == "__main__":
    started = time.monotonic()
    figures = run_fuzz(int(sys.argv[1]))
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    figures["input_size"] = list(SPEC.input_shape)
    figures["pillow"] = Image.__version__
    print(json.dumps(figures))
