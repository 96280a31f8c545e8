"""pneumocnn.runtime.model: load and predict on LiteRT: inputs of every kind, results and
thresholds, many inputs and folders, a corpus of hostile inputs, threads and fork. The
model is the tiny int8 model shipped in tests/data; every bad input is written by the test
(RELIABILITY.md lists the figures)."""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_DATA, FULL_RESOLUTION, real_images
from PIL import Image

import pneumocnn

# ---------------------------------------------------------------------------------------------
# predict


def test_inference_never_imports_tensorflow(int8_path):
    image = real_images("PNEUMONIA", 1)[0]
    code = textwrap.dedent(f"""
        import sys
        import pneumocnn
        model = pneumocnn.load({str(int8_path)!r})
        print(model.predict({str(image)!r}))
        print(pneumocnn.predict is not None, pneumocnn.evaluate is not None)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert image.name in result.stdout


def test_every_input_kind_gives_the_same_answer(model):
    path = real_images("NORMAL", 1)[0]
    data = path.read_bytes()
    with Image.open(path) as opened:
        pil = opened.convert("RGB")
    pixels = np.asarray(pil)
    inputs = [str(path), path, data, io.BytesIO(data), pil, pixels, pixels[..., 0],
              pixels[..., :1], pixels[..., 0].astype(np.uint16) * 257, pixels / 255.0]
    probabilities = [model.predict(item).probability for item in inputs]
    assert np.allclose(probabilities, probabilities[0], atol=1e-6), probabilities


def test_result_is_a_small_frozen_record(model):
    path = real_images("PNEUMONIA", 1)[0]
    result = model.predict(path)
    assert result.label in model.labels and 0.0 <= result.probability <= 1.0
    assert result.label == ("PNEUMONIA" if result.probability >= model.threshold else "NORMAL")
    assert result.source == str(path) and result.ok
    assert result.to_dict()["threshold"] == model.threshold
    assert path.name in str(result) and "probability" in str(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.label = "NORMAL"


def test_a_failed_result_says_why_without_a_label():
    from pneumocnn.core.errors import InputError
    from pneumocnn.runtime.model import Prediction

    unreadable = Prediction.failed("a.png", 0.4, InputError("a.png", "not an image"))
    odd = Prediction.failed("b.png", 0.4, OSError("disk gone"))
    assert (unreadable.label, unreadable.ok, unreadable.threshold) == (None, False, 0.4)
    assert unreadable.error == "not an image" and odd.error == "OSError: disk gone"
    assert unreadable.to_dict()["probability"] is None and str(odd) == "b.png: error: OSError: disk gone"


def test_flagged_is_set_where_the_guard_s_error_becomes_a_result():
    """``flagged`` is a field of the result, set from the error's type where it is made, not
    read from the error's words; the dict (JSON and CSV) keeps its five fields."""
    from pneumocnn.core.errors import InputError, NotFrontalChestError
    from pneumocnn.core.guard import PREFIX
    from pneumocnn.runtime.model import Prediction

    held = Prediction.failed("lateral.dcm", 0.4, NotFrontalChestError("lateral.dcm",
                                                                      f"{PREFIX}LL view"))
    look_alike = Prediction.failed("odd.dcm", 0.4, InputError("odd.dcm", f"{PREFIX}so it says"))
    assert held.flagged and not held.ok and held.error == f"{PREFIX}LL view"
    assert not look_alike.flagged and not Prediction("a.png", "NORMAL", 0.1, 0.4).flagged
    assert list(held.to_dict()) == ["source", "label", "probability", "threshold", "error"]


def test_threshold_override(model):
    path = real_images("NORMAL", 1)[0]
    assert model.predict(path, threshold=0.0).label == "PNEUMONIA"
    p = model.predict(path).probability
    assert model.predict(path, threshold=min(1.0, p + 1e-3)).label == "NORMAL"
    with pytest.raises(ValueError):
        model.predict(path, threshold=1.5)


def test_many_inputs_keep_order_and_bad_ones_do_not_stop_the_rest(model, tmp_path):
    good = real_images("NORMAL", 2) + real_images("PNEUMONIA", 2)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"<html>not an x-ray</html>")
    inputs = [good[0], broken, good[1], np.zeros((4, 4, 2)), good[2], good[3]]
    results = model.predict(inputs)
    assert [r.ok for r in results] == [True, False, True, False, True, True]
    assert results[1].source == str(broken) and "not a recognised image" in results[1].error
    assert results[3].source == "inputs[3]" and "shape" in results[3].error
    assert np.isnan(results[1].probability) and results[1].label is None
    assert [r.source for r in results if r.ok] == [str(p) for p in good]


def test_folder_is_searched_recursively_in_sorted_order(model, tmp_path):
    (tmp_path / "b").mkdir()
    names = []
    for i, path in enumerate(real_images("PNEUMONIA", 3)):
        target = tmp_path / ("b" if i else "") / f"{i}.jpeg"
        target.write_bytes(path.read_bytes())
        names.append(str(target))
    (tmp_path / "notes.txt").write_text("not an image")
    results = model.predict(tmp_path)
    assert sorted(r.source for r in results) == sorted(names)
    assert all(r.ok for r in results)


def test_single_bad_input_raises_an_error_naming_it(model, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(pneumocnn.InputError, match="empty.png"):
        model.predict(empty)
    with pytest.raises(pneumocnn.InputError, match="missing.jpeg"):
        model.predict(tmp_path / "missing.jpeg")


@pytest.mark.parametrize("folder, count", [
    (FULL_RESOLUTION, 3),
    pytest.param(FULL_DATA / "full_resolution", 46, marks=pytest.mark.full_data),
], ids=["shipped", "full"])
def test_full_size_clinic_images(model, folder, count):
    files = sorted(folder.rglob("*.jpeg"))
    assert len(files) == count
    results = model.predict(files)
    assert all(r.ok for r in results)


# ---------------------------------------------------------------------------------------------
# a corpus of bad inputs, written by the test


ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def zero_png(width: int, height: int, bits: int = 1) -> bytes:
    """A grayscale PNG of zeros, streamed through zlib: a decompression bomb when large."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" * (1 + (width * bits + 7) // 8)) * 1000
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows[: len(rows) * min(1000, height - y) // 1000])
                    for y in range(0, height, 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def corrupt_huffman(jpeg: bytes, how: str) -> bytes:
    """Damage the first DHT (Huffman table) segment of a JPEG."""
    start = jpeg.index(b"\xff\xc4") + 5  # marker, 2-byte length, table class/id
    data = bytearray(jpeg)
    if how == "counts-overflow":
        data[start : start + 16] = b"\xff" * 16
    elif how == "counts-zero":
        data[start : start + 16] = b"\x00" * 16
    else:
        data[start : start + 40] = np.random.default_rng(1).integers(0, 256, 40, np.uint8).tobytes()
    return bytes(data)


def deep_file(root: Path, data: bytes, depth: int = 20) -> None:
    """Write ``data`` at a path longer than PATH_MAX (4096), folder by folder (``dir_fd``)."""
    folder = os.open(root, os.O_RDONLY)
    for level in range(depth):
        name = f"{level:02d}" + "d" * 240
        os.mkdir(name, dir_fd=folder)
        inner = os.open(name, os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    handle = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
    os.write(handle, data)
    os.close(handle)
    os.close(folder)


def build_corpus(root: Path) -> dict[str, set[str]]:
    """Write the bad-input corpus into ``root``; return the file names expected to be scored
    (``ok``), refused (``error``) or either (``either``: truncated and damaged files, which a
    decoder may still read) and the folders expected to be reported as unreadable."""
    xray = real_images("NORMAL", 1, start=10)[0].read_bytes()
    with Image.open(io.BytesIO(xray)) as opened:
        gray = opened.convert("L")
    pixels = np.asarray(gray)
    png = encode(gray, "PNG")
    rng = np.random.default_rng(6)
    ok: dict[str, bytes] = {
        "control.jpeg": xray,
        "one-pixel.png": encode(Image.new("L", (1, 1), 128), "PNG"),
        "1x100000.png": encode(Image.new("L", (1, 100_000), 90), "PNG"),
        "100000x1.png": encode(Image.new("L", (100_000, 1), 90), "PNG"),
        "cmyk.jpeg": encode(gray.convert("CMYK"), "JPEG", quality=90),
        "palette-transparency.png": encode(gray.convert("P"), "PNG", transparency=0),
        "sixteen-bit.png": encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG"),
        "gray-alpha.png": encode(gray.convert("LA"), "PNG"),
        "rgba.png": encode(gray.convert("RGBA"), "PNG"),
        "animated.gif": encode(gray, "GIF", save_all=True, append_images=[gray.rotate(90)]),
        "multi-frame.tiff": encode(gray, "TIFF", save_all=True, append_images=[gray.rotate(90)]),
        "progressive.jpeg": encode(gray, "JPEG", quality=90, progressive=True),
        "float.tiff": encode(Image.fromarray(pixels.astype(np.float32) / 255), "TIFF"),
        "bitmap.bmp": encode(gray, "BMP"),
        "webp.webp": encode(gray, "WEBP"),
        "png-named.jpeg": png,
        ("L" * 251) + ".png": png,  # 255 bytes, the longest name most file systems allow
    }
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    ok["exif-rotated.jpeg"] = encode(gray.rotate(90, expand=True), "JPEG", exif=exif)
    error: dict[str, bytes] = {
        "zero-bytes.jpeg": b"",
        "random.jpeg": rng.integers(0, 256, 20_000, np.uint8).tobytes(),
        "random.png": rng.integers(0, 256, 3_000, np.uint8).tobytes(),
        "page.jpeg": b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>\n",
        "notes.jpeg": "Befund: keine Auff\u00e4lligkeiten\n".encode("latin-1"),
        "bomb-30000x30000.png": zero_png(30_000, 30_000),
        "postscript.jpeg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n",
        "pdf.png": b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n",
        "jpeg-start-only.jpeg": xray[:2],
        "float-out-of-range.tiff": encode(Image.fromarray(pixels.astype(np.float32)), "TIFF"),
    }
    either: dict[str, bytes] = {}
    for cut in np.unique(np.r_[np.linspace(3, 600, 10), np.linspace(600, len(xray) - 1, 30)]):
        either[f"truncated-{int(cut):06d}.jpeg"] = xray[: int(cut)]
    for cut in np.unique(np.r_[np.linspace(9, 200, 10), np.linspace(200, len(png) - 1, 30)]):
        either[f"truncated-{int(cut):06d}.png"] = png[: int(cut)]
    for how in ("counts-overflow", "counts-zero", "random"):
        either[f"huffman-{how}.jpeg"] = corrupt_huffman(xray, how)
    for group in (ok, error, either):
        for name, data in group.items():
            (root / name).write_bytes(data)
    # names and folder entries a PACS export or USB stick may hold
    non_utf8 = os.fsencode(root) + b"/r\xf6ntgen-\xff.jpeg"
    Path(os.fsdecode(non_utf8)).write_bytes(xray)
    (root / "loop").symlink_to(".", target_is_directory=True)  # a folder symlink loop
    (root / "self-loop.jpeg").symlink_to("self-loop.jpeg")  # ELOOP
    (root / "dangling.jpeg").symlink_to("no-such-file.jpeg")
    (root / "device.jpeg").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jpeg")  # opening it for reading would block forever
    (root / "readme.txt").write_text("not an image: not scored")
    (root / "deep").mkdir()
    deep_file(root / "deep", png)
    return {
        "ok": {*ok, os.fsdecode(b"r\xf6ntgen-\xff.jpeg")},
        "error": {*error, "self-loop.jpeg", "dangling.jpeg", "device.jpeg", "pipe.jpeg"},
        "either": set(either),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def _kind(result, expected: dict[str, set[str]]) -> str:
    name = Path(result.source).name
    kinds = [kind for kind, names in expected.items() if name in names]
    if "deep" in Path(result.source).parts:
        kinds.append("folder")
    return kinds[0] if len(kinds) == 1 else "unexpected"


def test_bad_input_corpus_in_a_folder(model, corpus):
    """Every file gets an answer or an error naming it; the one folder too deep to list is
    reported; the others are scored."""
    root, expected = corpus
    results = model.predict(root)
    kinds = [_kind(r, expected) for r in results]
    assert "unexpected" not in kinds, [r.source for r in results if _kind(r, expected) == "unexpected"]
    assert len(results) == sum(map(len, expected.values())) + 1  # + the folder past PATH_MAX
    assert len(results) == 115
    for result, kind in zip(results, kinds, strict=True):
        assert result.ok or result.error, result
        if kind == "ok":
            assert result.ok and 0.0 <= result.probability <= 1.0, result
        elif kind in ("error", "folder"):
            assert not result.ok and result.label is None and np.isnan(result.probability), result
    folder = [r for r, k in zip(results, kinds, strict=True) if k == "folder"]
    assert len(folder) == 1 and "folder cannot be read" in folder[0].error
    assert "File name too long" in folder[0].error
    # a file scored among hostile neighbours gets exactly its own answer
    control = next(r for r in results if r.source.endswith("control.jpeg"))
    assert control.probability == model.predict(root / "control.jpeg").probability
    counts = {k: sum(1 for x in kinds if x == k) for k in ("ok", "error", "either")}
    assert counts == {"ok": 19, "error": 14, "either": 81}
    either = [r.ok for r, k in zip(results, kinds, strict=True) if k == "either"]
    print(json.dumps({"files": len(results) - 1, "scored": sum(r.ok for r in results),
                      "damaged scored": sum(either), "damaged refused": len(either) - sum(either)}))


def test_bad_input_corpus_one_file_at_a_time(model, corpus):
    """A single input is either scored or raises an InputError naming it, never anything else."""
    root, expected = corpus
    outcomes = {"scored": 0, "refused": 0}
    for name in sorted(set().union(*expected.values())):
        path = root / name
        try:
            result = model.predict(path)
        except pneumocnn.InputError as error:
            assert error.source == str(path) and error.reason
            assert name not in expected["ok"], error
            outcomes["refused"] += 1
        else:
            assert name not in expected["error"], result
            assert result.source == str(path)
            outcomes["scored"] += 1
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            try:
                model.predict(data)
            except pneumocnn.InputError as error:
                assert error.source == f"<{len(data)} bytes>"
    assert sum(outcomes.values()) == 114
    assert outcomes["scored"] >= 19 and outcomes["refused"] >= 14


def _array_with(value: float) -> np.ndarray:
    array = np.full((32, 32), 0.5)
    array[1, 2] = value
    return array


def test_bad_arrays_and_objects_in_one_batch(model):
    good = np.asarray(Image.open(real_images("PNEUMONIA", 1)[0]).convert("L"))
    bad = [
        np.zeros((0, 0), np.uint8), np.zeros((1, 32, 32, 3), np.uint8), np.zeros((32, 32, 2)),
        _array_with(np.nan), _array_with(np.inf), _array_with(-np.inf), _array_with(-0.5),
        np.full((32, 32), -1, np.int64), np.ones((32, 32), bool), np.full((4, 4), 2**40),
        None, 42, object(),
    ]
    answered = [good, good.astype(np.int64), good.astype(np.uint16) * 257, good / 255.0,
                np.zeros((1, 1)), np.ones((1, 100_000), np.uint8)]
    inputs = answered + bad + answered
    results = model.predict(inputs)
    assert len(results) == 25
    assert [r.ok for r in results] == [True] * 6 + [False] * 13 + [True] * 6
    for index, result in enumerate(results[6:19], start=6):
        assert result.source == f"inputs[{index}]" and result.error
    assert results[0].probability == model.predict(good).probability
    for item in bad:
        with pytest.raises(pneumocnn.InputError):
            model.predict(item)


# ---------------------------------------------------------------------------------------------
# concurrency: threads, fork


def test_one_model_shared_by_eight_threads_gives_the_serial_answers(model):
    files = real_images("NORMAL", 6) + real_images("PNEUMONIA", 6)
    serial = [model.predict(f).probability for f in files]
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: [model.predict(f).probability for f in files], range(8)))
    for run in runs:
        assert run == serial


def mixed_inputs(count: int) -> list:
    """``count`` inputs of every kind, some of them unusable, in a fixed order."""
    files = real_images("NORMAL", 10) + real_images("PNEUMONIA", 10)
    kinds = [
        lambda f: f, lambda f: str(f), lambda f: f.read_bytes(),
        lambda f: np.asarray(Image.open(f).convert("L")),
        lambda f: np.asarray(Image.open(f).convert("L")).astype(np.uint16) * 257,
        lambda f: Image.open(f).convert("RGB"),
        lambda f: f.read_bytes()[: len(f.read_bytes()) // 3],  # truncated: an error or an answer
        lambda f: np.zeros((8, 8, 2)),  # always an error
    ]
    return [kinds[i % len(kinds)](files[i % len(files)]) for i in range(count)]


def answer(model, item) -> tuple:
    try:
        result = model.predict(item)
    except pneumocnn.InputError as error:
        return ("error", error.reason)
    return (result.label, result.probability)


def test_eight_threads_share_one_model(model):
    inputs = mixed_inputs(40)
    serial = [answer(model, item) for item in inputs]
    assert sum(a[0] == "error" for a in serial) >= 5

    def worker(offset: int) -> list[tuple]:
        return [answer(model, inputs[(offset + i) % len(inputs)]) for i in range(100)]

    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(worker, range(8)))
    for offset, run in enumerate(runs):
        assert run == [serial[(offset + i) % len(inputs)] for i in range(100)]
    # batches from several threads at once, each with its own decoding threads
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: model.predict(inputs), range(4)))
    for batch in batches:
        assert [(r.label, r.probability) if r.ok else ("error", r.error) for r in batch] == serial


def test_eight_threads_times_1000_predictions(model):
    inputs = mixed_inputs(200)
    serial = [answer(model, item) for item in inputs]

    def worker(offset: int) -> list[tuple]:
        return [answer(model, inputs[(offset * 25 + i) % len(inputs)]) for i in range(1000)]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(worker, range(8)))
    print(json.dumps({"threads": 8, "predictions": 8000, "seconds": round(time.monotonic() - started, 1),
                      "errors_per_thread": sum(a[0] == "error" for a in runs[0])}))
    for offset, run in enumerate(runs):
        assert run == [serial[(offset * 25 + i) % len(inputs)] for i in range(1000)]


_FORKED: dict = {}


def _predict_in_child(index: int) -> tuple:
    return answer(_FORKED["model"], _FORKED["inputs"][index])


def _fork_pool_answers(count: int) -> list:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map_async(_predict_in_child, range(count)).get(timeout=60)


def test_models_work_after_fork(int8_path):
    """A model loaded (and used) before fork works in the children, also when other threads
    of the parent are using it at the moment of the fork."""
    model = pneumocnn.load(int8_path)
    _FORKED.update(model=model, inputs=mixed_inputs(16))
    serial = [answer(model, item) for item in _FORKED["inputs"]]
    assert _fork_pool_answers(16) == serial

    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            model.predict(np.full((64, 64), 0.3))

    workers = [threading.Thread(target=busy) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(5):  # before the fix, the first child hung on the parent's held lock
            assert _fork_pool_answers(16) == serial
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    unused = pneumocnn.load(int8_path)  # loaded, never run, then forked
    _FORKED["model"] = unused
    assert _fork_pool_answers(16) == serial
