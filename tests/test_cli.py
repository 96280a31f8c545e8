"""pneumocnn.cli: predict (output formats, exit codes, hostile and unreadable inputs, the CSV
streamed and resumed), evaluate, info, explain, triage, and the options of train."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TINY_INT8, XRAYS, real_images
from PIL import Image

import pneumocnn
from pneumocnn.cli import main
from pneumocnn.runtime.explain import grad_cam


def test_predict_prints_one_line_per_image_and_exits_0(capsys):
    files = [str(p) for p in real_images("NORMAL", 2)]
    assert main(["predict", *files, "--model", str(TINY_INT8)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("probability" in line for line in lines)


def test_predict_reports_bad_files_goes_on_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"garbage")
    good = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "out.csv"
    code = main(["predict", good, str(bad), "--model", str(TINY_INT8),
                 "--csv", str(out)])
    assert code == 1
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [good, str(bad)]
    assert rows[0]["label"] in ("NORMAL", "PNEUMONIA") and rows[1]["error"]
    assert "1 input(s) could not be scored" in capsys.readouterr().err


def test_predict_json_lines(capsys):
    image = str(real_images("NORMAL", 1)[0])
    assert main(["predict", image, "--json", "--model", str(TINY_INT8)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == image and record["error"] is None


@pytest.mark.parametrize("argv", [
    ["predict"],
    ["predict", "x.jpeg", "--model", "/no/such/model.tflite"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits by itself on bad syntax
        code = exit_.code
    assert code == 2


def test_a_library_user_keeps_stderr_untouched():
    """Without the command line, descriptor 2 is never redirected: LiteRT's line gets through."""
    code = ("import pneumocnn, sys; pneumocnn.load(sys.argv[1], variant='int8')")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "pneumocnn" / "models")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK delegate" in result.stderr


def test_console_script_runs_as_a_module_and_says_nothing_on_stderr():
    """A fresh process: LiteRT's INFO line about its CPU delegate does not reach stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "pneumocnn", "predict", str(real_images("NORMAL", 1)[0])],
        capture_output=True, text=True)
    assert result.returncode == 0 and "probability" in result.stdout
    assert result.stderr == ""


def test_native_chatter_is_dropped_and_every_other_line_kept():
    """What a native library writes to descriptor 2 while an interpreter is made reaches
    stderr as it was, less LiteRT's INFO line: a real warning or error gets through."""
    code = textwrap.dedent("""
        import os, sys
        from pneumocnn.runtime.native_stderr import drop_native_chatter, dropping
        drop_native_chatter()
        with dropping():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"ERROR: Didn't find op for builtin opcode 'CONV_2D'\\nWARNING: x")
            print("from Python", file=sys.stderr)
        print("after", file=sys.stderr)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("ERROR: Didn't find op for builtin opcode 'CONV_2D'\nWARNING: x"
                             "from Python\nafter\n")


def test_info_is_a_readable_summary_and_the_description_is_behind_json(tmp_path):
    """info says what the digest is a digest of, and gives sha256sum's value beside it."""
    import hashlib

    result = subprocess.run([sys.executable, "-m", "pneumocnn", "info", str(TINY_INT8)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 12 and not any(line.startswith(("{", "}", '"')) for line in lines)
    description = pneumocnn.load(TINY_INT8).description
    assert f"threshold {description.threshold:.3f}" in result.stdout
    assert f"digest: sha256 {description.sha256}, checked at load" in result.stdout
    whole = hashlib.sha256(TINY_INT8.read_bytes()).hexdigest()
    assert whole != description.sha256 and f"sha256sum of the file differs: it gives {whole}" in (
        " ".join(line.strip() for line in lines))
    raw = subprocess.run([sys.executable, "-m", "pneumocnn", "info", str(TINY_INT8), "--json"],
                         capture_output=True, text=True)
    assert json.loads(raw.stdout)["format"] == "pneumocnn-model"


def test_evaluate_writes_metrics_and_figures(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", str(TINY_INT8), str(XRAYS),
                 "--out", str(out), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 48 and sum(map(sum, metrics["confusion"])) == 48
    for name in ("metrics.json", "predictions.csv", "roc.png", "confusion.png", "reliability.png"):
        assert (out / name).stat().st_size > 0


def without(*modules: str, code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh process where importing ``modules`` fails, as on an
    install without them."""
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    return subprocess.run([sys.executable, "-c", f"import sys; {blocked}\n{code}"],
                          capture_output=True, text=True)


def test_evaluate_without_matplotlib_writes_the_rest_and_names_the_extra(tmp_path):
    out = tmp_path / "eval"
    result = without("matplotlib", code=textwrap.dedent(f"""
        from pneumocnn.cli import main
        sys.exit(main(["evaluate", {str(TINY_INT8)!r}, {str(XRAYS)!r}, "--out", {str(out)!r},
                       "--json"]))
        """))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["n"] == 48  # the --json output is kept
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.csv"]
    assert "pip install 'pneumocnn[plots]'" in result.stderr and "Traceback" not in result.stderr
    assert "[train]" not in result.stderr


def test_train_without_tensorflow_names_the_extra_without_a_traceback(tmp_path):
    result = without("keras", "tensorflow", code=textwrap.dedent(f"""
        import pneumocnn
        from pneumocnn.cli import main
        try:
            pneumocnn.train({str(XRAYS)!r}, {str(tmp_path / "run")!r})
        except pneumocnn.MissingDependencyError as error:
            print("raised", type(error).__mro__[1].__name__, error)
        sys.exit(main(["train", {str(XRAYS)!r}, "--out", {str(tmp_path / "run")!r}]))
        """))
    assert result.returncode == 2
    assert result.stdout.startswith("raised PneumocnnError training needs TensorFlow")
    assert result.stderr == ("pneumocnn train: error: training needs TensorFlow (tensorflow and "
                             "keras not installed): pip install 'pneumocnn[train]'\n")
    assert not (tmp_path / "run").exists()


def test_predict_refuses_inputs_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no X-rays here")
    (tmp_path / "list.txt").write_text("")
    for inputs in ([tmp_path / "empty"], [tmp_path / "notes"], [tmp_path / "list.txt"]):
        argv = ["predict", *map(str, inputs), "--model", str(TINY_INT8)]
        assert main([*argv, "--csv", str(tmp_path / "out.csv")]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"pneumocnn predict: error: no images in {inputs[0]}: found no "
                                ".bmp, .gif, .jpeg"), error
        assert not (tmp_path / "out.csv").exists()  # no header-only file
    assert main(["triage", str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 2
    assert "no images in" in capsys.readouterr().err and not (tmp_path / "report").exists()


def test_predict_csv_ends_with_a_summary_line(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in real_images("NORMAL", 3) + real_images("PNEUMONIA", 2):
        shutil.copy(path, scans / path.name)
    (scans / "bad.jpeg").write_bytes(b"garbage")
    out = tmp_path / "out.csv"
    assert main(["predict", str(scans), "--csv", str(out), "--model", str(TINY_INT8)]) == 1
    positive = sum(row["label"] == "PNEUMONIA" for row in read_csv(out))
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(rf"pneumocnn predict: 6 input\(s\) in [0-9.]+ s \([0-9.]+/s\): 5 scored, "
                        rf"{positive} of them PNEUMONIA; 1 not scored; rows in {re.escape(str(out))}",
                        last), last
    (scans / "new.jpeg").write_bytes(real_images("NORMAL", 1, start=5)[0].read_bytes())
    assert main(["predict", str(scans), "--csv", str(out), "--resume",
                 "--model", str(TINY_INT8)]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert "1 input(s) in" in last and "(6 rows were there already)" in last


def test_calibrate_warns_and_exits_1_when_its_sensitivity_falls_short(tmp_path, capsys):
    """On the 48 X-rays of tests/data the bundled model's threshold for sensitivity 0.9 is
    cross-validated at 0.833: a warning, exit 1, the site model written; at 0.8 none."""
    out = tmp_path / "site"
    assert main(["calibrate", str(XRAYS), "--out", str(out), "--target-sensitivity", "0.9"]) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all(
        line.startswith("pneumocnn calibrate: warning: cross-validated sensitivity 0.833")
        and "falls short of the target 0.9" in line for line in warnings)
    assert (out / "pneumonia-int8.tflite").exists()
    assert main(["calibrate", str(XRAYS), "--out", str(tmp_path / "site-80"),
                 "--target-sensitivity", "0.8"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.training
def test_train_options_default_to_the_recipe(monkeypatch, tmp_path):
    """``pneumocnn train DATA`` trains exactly ``pneumocnn.train(DATA)``; flags override the
    recipe and reach the run; ``--recipe seed`` is the seed report's recipe."""
    import dataclasses

    from pneumocnn.training import trainer

    seen = []

    strategies = []

    def fake_train(data, out, recipe, resume, verbose, strategy, **settings):
        strategies.append(strategy)
        seen.append(trainer.make_config(recipe, **settings))
        raise pneumocnn.core.errors.DatasetError("stop here")

    monkeypatch.setattr(trainer, "train", fake_train)
    assert main(["train", str(tmp_path)]) == 2
    assert seen[-1] == trainer.TrainingConfig()
    main(["train", str(tmp_path), "--no-keep-best", "--normalize", "autocontrast", "--fold", "2",
          "--optimizer", "rmsprop", "--threshold", "sensitivity", "--augmentation", "shift-flip",
          "--class-weight", "none", "--recalibrate-batchnorm"])
    changed = {f.name for f in dataclasses.fields(trainer.TrainingConfig)
               if getattr(seen[-1], f.name) != getattr(trainer.TrainingConfig(), f.name)}
    assert changed <= {"keep_best", "normalize", "fold", "optimizer", "threshold", "augmentation",
                       "class_weight", "recalibrate_batchnorm"}
    assert seen[-1].recalibrate_batchnorm is True
    assert (seen[-1].normalize, seen[-1].fold, seen[-1].optimizer, seen[-1].threshold,
            seen[-1].augmentation) == ("autocontrast", 2, "rmsprop", "sensitivity", "shift-flip")
    assert seen[-1].keep_best is False and seen[-1].class_weight is None
    main(["train", str(tmp_path), "--recipe", "seed", "--epochs", "3"])
    assert seen[-1] == dataclasses.replace(trainer.make_config("seed"), epochs=3)
    assert (seen[-1].architecture, seen[-1].augmentation, seen[-1].threshold) == (
        "seed-to-be", "seed", 0.5)
    main(["train", str(tmp_path), "--recipe", "seed", "--seed", "7"])  # --seed: the random seed
    assert seen[-1] == dataclasses.replace(trainer.make_config("seed"), random_seed=7)
    main(["train", str(tmp_path), "--strategy", "mirrored", "--crop", "margins"])
    assert strategies == ["auto"] * 4 + ["mirrored"]  # where to train is not a setting
    assert seen[-1] == dataclasses.replace(trainer.TrainingConfig(), crop="margins")


def test_train_help_says_seed_is_the_random_seed(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--seed RANDOM_SEED    random seed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# predict on hostile inputs, unreadable files; the CSV: streaming, resumable


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """The bad-input corpus of test_model.py."""
    from test_model import build_corpus

    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def test_bad_input_corpus_on_the_command_line(int8_path, corpus, tmp_path, capsys):
    root, expected = corpus
    out = tmp_path / "out.csv"
    code = main(["predict", str(root), "--model", str(int8_path), "--csv", str(out)])
    assert code == 1
    with out.open(newline="", encoding="utf-8", errors="surrogateescape") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 115
    scored = [r for r in rows if not r["error"]]
    assert {Path(r["source"]).name for r in scored} >= expected["ok"]
    assert f"{115 - len(scored)} input(s) could not be scored" in capsys.readouterr().err
    # table output: a file name that is not UTF-8 is printed, not fatal
    assert main(["predict", str(root), "--model", str(int8_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 115 and any("r\\udcf6ntgen-\\udcff.jpeg" in line for line in lines)


def _without_root_file_access() -> None:
    """In a child about to exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    capability bounding set, so that root, too, is stopped by file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(os.geteuid() == 0 and not sys.platform.startswith("linux"),
                    reason="as root, permissions are only enforced after dropping Linux capabilities")
def test_unreadable_files_and_folders_are_reported(int8_path, tmp_path):
    """chmod 000 does not stop root: as root, the CLI runs without the capabilities that
    bypass file permissions."""
    scans = tmp_path / "scans"
    (scans / "locked").mkdir(parents=True)
    image = real_images("NORMAL", 1)[0].read_bytes()
    for path in (scans / "good.jpeg", scans / "secret.jpeg", scans / "locked" / "inner.jpeg"):
        path.write_bytes(image)
    os.chmod(scans / "secret.jpeg", 0)
    os.chmod(scans / "locked", 0)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pneumocnn", "predict", str(scans), "--json",
             "--model", str(int8_path)],
            capture_output=True, text=True,
            preexec_fn=_without_root_file_access if os.geteuid() == 0 else None)
    finally:
        os.chmod(scans / "locked", 0o755)
    assert result.returncode == 1, result.stderr
    rows = {Path(r["source"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == {"good.jpeg", "secret.jpeg", "locked"}
    assert rows["good.jpeg"]["error"] is None
    assert rows["secret.jpeg"]["error"] == "Permission denied"
    assert rows["locked"]["error"] == "folder cannot be read (Permission denied)"


def small_pngs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct 32x32 grayscale PNGs in ``folder`` (a few hundred bytes each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"scan-{index:05d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(path, compress_level=1)
        paths.append(path)
    return paths


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as stream:
        return list(csv.DictReader(stream))


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "xrays").glob("*.jpeg"))


def cut_last_row(path: Path) -> str:
    """Replace the last row of ``path`` by its first half, as a kill mid-write leaves it;
    return the line that was cut."""
    lines = path.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    path.write_bytes(b"".join(lines[:-1]) + last[: len(last) // 2])
    return last.decode()


def test_csv_output_resumes_after_kill_9(int8_path, tmp_path, capsys):
    scans = tmp_path / "scans"
    files = small_pngs(scans, 1500)
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "pneumocnn", "predict", str(scans), "--csv", str(out),
               "--model", str(int8_path), "--threads", "1"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.stat().st_size > 5000:
            break
        time.sleep(0.01)
    process.kill()
    process.wait()
    data = out.read_bytes()
    interrupted = list(csv.DictReader(io.StringIO(data[: data.rfind(b"\n") + 1].decode(), newline="")))
    assert 10 < len(interrupted) < 1501, "killed while scoring"
    with out.open("ab") as stream:  # as if the kill had cut a row in half
        stream.write(str(files[-1]).encode() + b",NORM")

    assert main(["predict", str(scans), "--csv", str(out), "--resume", "--model",
                 str(int8_path)]) == 1  # broken.png
    assert f"{len(interrupted)} input(s) already in" in capsys.readouterr().err
    rows = read_csv(out)
    assert rows[: len(interrupted)] == interrupted  # kept as they were
    assert sorted(r["source"] for r in rows) == sorted(map(str, [*files, scans / "broken.png"]))
    assert [r["source"] for r in rows if r["error"]] == [str(scans / "broken.png")]
    by_source = {r["source"]: float(r["probability"]) for r in rows if not r["error"]}
    model = pneumocnn.load(int8_path)
    for path in files[:: 150]:
        assert by_source[str(path)] == model.predict(path).probability

    # resuming a finished run scores nothing and keeps the exit code of the whole file
    assert main(["predict", str(scans), "--csv", str(out), "--resume", "--model",
                 str(int8_path)]) == 1
    assert read_csv(out) == rows


def test_csv_resume_usage_errors(int8_path, tmp_path):
    image = str(real_images("NORMAL", 1)[0])
    assert main(["predict", image, "--resume", "--model", str(int8_path)]) == 2
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("patient,finding\nA,none\n")
    assert main(["predict", image, "--csv", str(foreign), "--resume", "--model",
                 str(int8_path)]) == 2
    assert foreign.read_text() == "patient,finding\nA,none\n"
    fresh = tmp_path / "fresh.csv"  # --resume on a missing file: a fresh run
    assert main(["predict", image, "--csv", str(fresh), "--resume", "--model", str(int8_path)]) == 0
    assert [r["source"] for r in read_csv(fresh)] == [image]


def test_predict_csv_resume_after_a_row_cut_in_half(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in EXAMPLES[:3]:
        shutil.copy(path, scans / path.name)
    out = tmp_path / "out.csv"
    assert main(["predict", str(scans), "--csv", str(out)]) == 0
    complete = read_csv(out)
    cut = cut_last_row(out)
    assert main(["predict", str(scans), "--csv", str(out), "--resume"]) == 0
    assert "2 input(s) already in" in capsys.readouterr().err
    rows = read_csv(out)
    assert rows[:2] == complete[:2] and len(rows) == 3
    assert sorted(r["source"] for r in rows) == sorted(r["source"] for r in complete)
    assert out.read_bytes().endswith(cut.encode())  # the cut row is written again, whole



PEAK_RSS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pneumocnn.cli import main
    from test_preprocessing_fuzz import peak_rss_mb
    started = time.monotonic()
    code = main(["predict", sys.argv[1], "--csv", sys.argv[2], "--model", sys.argv[3]])
    print(json.dumps({"exit": code, "seconds": round(time.monotonic() - started, 1),
                      "peak_rss_mb": peak_rss_mb()}))
""")


@pytest.mark.slow
def test_folder_scoring_streams_in_flat_memory(int8_path, tmp_path):
    """Peak RSS of `pneumocnn predict FOLDER --csv` on 1,000 and on 10,000 files."""
    figures = {}
    for count in (1_000, 10_000):
        scans = tmp_path / f"scans-{count}"
        small_pngs(scans, count)
        out = tmp_path / f"out-{count}.csv"
        result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(scans), str(out),
                                 str(int8_path)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
        assert result.returncode == 0, result.stderr[-2000:]
        figures[count] = json.loads(result.stdout.splitlines()[-1])
        assert figures[count]["exit"] == 0 and len(read_csv(out)) == count
    print(figures)
    growth = figures[10_000]["peak_rss_mb"] - figures[1_000]["peak_rss_mb"]
    assert growth < 20, figures


# ---------------------------------------------------------------------------------------------
# explain and triage


def test_explain_and_triage_on_the_command_line(tmp_path):
    from pneumocnn.cli import main

    image = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "occlusion.png"
    assert main(["explain", image, "--model", str(TINY_INT8), "--method", "occlusion",
                 "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.width == 512 and picture.height > 512  # the X-ray, then its legend
    with pytest.raises(ValueError, match="Grad-CAM needs a .keras"):
        grad_cam(pneumocnn.load(TINY_INT8), image)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(image, scans)
    (scans / "bad.png").write_bytes(b"\x89PNG broken")
    code = main(["triage", str(scans), "--out", str(tmp_path / "report"), "--no-heatmaps",
                 "--model", str(TINY_INT8)])
    assert code == 1 and (tmp_path / "report" / "report.html").exists()


@pytest.mark.training
def test_explain_grad_cam_on_the_command_line(tiny_run, tmp_path):
    from pneumocnn.cli import main

    image = str(real_images("PNEUMONIA", 1)[0])
    out = tmp_path / "grad-cam.png"
    assert main(["explain", image, "--model", str(tiny_run.keras_model), "--method", "grad-cam",
                 "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.width == 512 and picture.height > 512


# ---------------------------------------------------------------------------------------------
# strict JSON; DICOM on the command line: one line of pneumocnn's per file, the input guard


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as jq, JavaScript and databases do."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneumocnn", *argv, "--model", str(TINY_INT8)],
                          capture_output=True, text=True)


def test_json_output_is_strict_with_null_for_what_was_not_scored(tmp_path, capsys):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"garbage")
    good = str(real_images("NORMAL", 1)[0])
    assert main(["predict", good, str(bad), "--json", "--model", str(TINY_INT8)]) == 1
    records = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["probability"] > 0 and records[1]["probability"] is None
    assert records[1]["label"] is None and records[1]["error"]
    assert main(["predict", good, str(bad), "--csv", str(tmp_path / "out.csv"),
                 "--model", str(TINY_INT8)]) == 1
    assert [row["probability"] for row in read_csv(tmp_path / "out.csv")][1] == ""
    # evaluate: metrics undefined on one class (ROC AUC, sensitivity) are null
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True)
    shutil.copy(good, tmp_path / "data" / "NORMAL")
    shutil.copy(bad, tmp_path / "data" / "PNEUMONIA")
    assert main(["evaluate", str(TINY_INT8), str(tmp_path / "data"), "--json",
                 "--out", str(tmp_path / "eval")]) == 1
    for metrics in (strict_json(capsys.readouterr().out),
                    strict_json((tmp_path / "eval" / "metrics.json").read_text())):
        assert metrics["roc_auc"] is None and metrics["sensitivity"] is None
        assert metrics["specificity"] == 1.0


def test_damaged_dicom_files_get_one_line_each_and_no_library_output(tmp_path):
    """What pydicom logs (an error with a traceback per failing decoder) and warns never
    reaches stderr: with --json, each damaged file is named there in one line of pneumocnn's;
    in the table, its line is on stdout and stderr holds only the count."""
    pytest.importorskip("pydicom")
    from test_dicom import damaged_files

    with Image.open(real_images("NORMAL", 1)[0]) as image:
        names = damaged_files(tmp_path / "scans", np.asarray(image.convert("L")))
    shutil.copy(real_images("NORMAL", 1)[0], tmp_path / "scans" / "good.jpeg")
    result = run_cli("predict", str(tmp_path / "scans"), "--json")
    assert result.returncode == 1, result.stderr
    records = [strict_json(line) for line in result.stdout.splitlines()]
    assert [r["error"] is None for r in records].count(True) == 1
    for text in (result.stderr, result.stdout):
        assert "Traceback" not in text and "Warning" not in text and "pydicom/" not in text, text
    for name in names:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert len(lines) == 1 and lines[0].startswith("pneumocnn predict: "), result.stderr
    assert f"{len(names)} input(s) could not be scored" in result.stderr
    table = run_cli("predict", str(tmp_path / "scans"))
    assert table.returncode == 1
    assert not any(name in table.stderr for name in names) and "Traceback" not in table.stderr
    assert len(table.stdout.splitlines()) == len(names) + 1
    assert all(sum(name in line for line in table.stdout.splitlines()) == 1 for name in names)


def test_guard_on_the_command_line(tmp_path):
    """A lateral view is reported, not scored: no label, no probability, the reason in the
    error column (the CSV keeps its columns), exit code 1 as for inputs that failed;
    --no-guard scores it."""
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    from pneumocnn.core.guard import PREFIX

    scans = tmp_path / "scans"
    scans.mkdir()
    with Image.open(real_images("PNEUMONIA", 1)[0]) as image:
        gray = np.asarray(image.convert("L"))
    write_dicom(scans / "lateral.dcm", gray, BodyPartExamined="CHEST", ViewPosition="LL")
    write_dicom(scans / "pa.dcm", gray, BodyPartExamined="CHEST", ViewPosition="PA")
    result = run_cli("predict", str(scans), "--csv", str(tmp_path / "out.csv"))
    assert result.returncode == 1
    assert "1 input(s) could not be scored, 1 of them not a frontal chest X-ray" in result.stderr
    with (tmp_path / "out.csv").open() as stream:
        assert stream.readline().strip() == "source,label,probability,threshold,error"
    lateral, pa = read_csv(tmp_path / "out.csv")
    assert (lateral["label"], lateral["probability"]) == ("", "")
    assert lateral["error"] == f"{PREFIX}lateral view (ViewPosition LL)"
    assert pa["label"] in ("NORMAL", "PNEUMONIA") and not pa["error"]
    records = [strict_json(line) for line in run_cli("predict", str(scans), "--json").stdout.splitlines()]
    assert records[0]["label"] is None and records[0]["error"].startswith(PREFIX)
    unguarded = run_cli("predict", str(scans), "--json", "--no-guard")
    assert unguarded.returncode == 0, unguarded.stderr
    records = [strict_json(line) for line in unguarded.stdout.splitlines()]
    assert records[0]["probability"] == records[1]["probability"]  # the same pixels
    explained = run_cli("explain", str(scans / "lateral.dcm"), "--out", str(tmp_path / "h.png"))
    assert explained.returncode == 2 and "--no-guard" in explained.stderr
    assert run_cli("explain", str(scans / "lateral.dcm"), "--out", str(tmp_path / "h.png"),
                   "--no-guard").returncode == 0
