"""The benchmark suite's --quick path on the tiny model: it runs end to end and writes a table,
a JSON file and a plot of the expected structure (speeds are not checked); out of the box on the
shipped bundled run; and its pieces: CPU features, ties, the default rows' folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_RESOLUTION, REPO, TINY_FLOAT, TINY_INT8, full_resolution_files, real_images

from benchmarks import BUNDLED_RUN, SHARED_DATA
from benchmarks.coldstart import BARE_LITERT, OURS


@pytest.mark.training
def test_quick_benchmark_writes_results(tiny_run, tiny_data, tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "results"
    results = main(["--quick", "--run", str(tiny_run.run_dir), "--data", str(tiny_data),
                    "--train-data", str(tiny_data), "--full-resolution", str(FULL_RESOLUTION),
                    "--out", str(out)])

    assert sorted(p.name for p in out.iterdir()) == ["latency_vs_accuracy.png", "results.json",
                                                     "results.md"]
    stored = json.loads((out / "results.json").read_text())
    assert stored["mode"] == "quick"
    for key in ("cpu", "cpu_features", "cores", "python", "versions", "threads"):
        assert key in stored["machine"]
    assert stored["machine"]["cpu_features"]["class"] in (out / "results.md").read_text()
    assert {"numpy", "tensorflow", "ai-edge-litert", "onnxruntime"} <= set(stored["machine"]["versions"])

    keys = [v["key"] for v in results["variants"]]
    assert keys[:2] == ["keras-predict", "keras-compiled"]
    for quantization in ("float32", "float16", "dynamic-int8", "int8"):
        assert f"litert-{quantization}-1t" in keys
    defaults = [v for v in results["variants"] if v.get("default")]
    assert [v["key"] for v in defaults] == [f"default-{t}t" for t in sorted({1, os.cpu_count() or 1})]
    for variant in defaults:  # the run folder (the bundled models are another model's files)
        assert variant["folder"] == str(tiny_run.run_dir)
        assert variant["label"] == f"pneumocnn.load() default (chose {variant['quantization']})"
        assert variant["quantization"] in variant["candidates"]
        assert set(variant["timings_ms"]) == set(variant["candidates"])  # chosen afresh, timed
    assert any(k.startswith("onnxruntime-float32") for k in keys)
    onnx_int8 = [v for v in results["variants"] if v["key"].startswith("onnxruntime-int8")]
    assert onnx_int8 and all(v["error"] is None for v in onnx_int8)  # ONNX Runtime's own int8
    assert results["inputs"]["onnx_calibration_images"] > 0
    litert = [v for v in results["variants"] if v["runtime"] == "LiteRT"]
    assert all(v["multiply_adds"] > 0 for v in litert)  # the limit column
    assert {v["multiply_adds"] for v in onnx_int8} == {v["multiply_adds"] for v in litert}
    assert "% FMA peak" in (out / "results.md").read_text()
    for variant in results["variants"]:
        if variant["error"]:  # a variant that cannot run says why, and is in the table
            assert variant["label"] in (out / "results.md").read_text()
            continue
        key = variant["key"]
        assert {"accuracy", "roc_auc", "sensitivity", "specificity", "agreement", "max_abs_diff",
                "distinct_probabilities", "largest_tie", "largest_tie_pct"} <= set(results["quality"][key])
        assert results["latency"][key]["n"] >= 1
        assert results["latency"][key]["p95_ms"] >= results["latency"][key]["median_ms"] > 0
        assert results["throughput"][key]["images_per_s"] > 0
    assert results["quality"]["keras-compiled"]["agreement"] == 1.0

    e2e = results["end_to_end"]
    assert set(e2e) == {"pneumocnn", "decode+invoke", "floor", "naive decode", "naive", "folder"}
    assert f"({defaults[-1]['quantization']})" in e2e["pneumocnn"]["label"]
    assert e2e["folder"]["vs_single_calls"] > 0
    cold = results["cold_start"][OURS]
    assert cold["median_s"] > 0 and cold["max_peak_rss_mb"] > 0
    assert not cold["tensorflow_imported"]
    bare = results["cold_start"][BARE_LITERT]
    assert bare["model"] == defaults[-1]["chosen_file"] or bare["model"].endswith(
        defaults[-1]["chosen_file"])  # the bare process runs the file load() chose
    assert results["cold_start"]["vs_bare"]["median_peak_rss_mb"] == pytest.approx(
        cold["median_peak_rss_mb"] / bare["median_peak_rss_mb"])
    assert set(results["pipeline"]["pipelines"]) == {"pneumocnn", "in-memory", "seed"}
    assert all(t["result"] in ("PASS", "FAIL", "N/A") for t in results["targets"])
    named = [t["target"] for t in results["targets"]]
    for wanted in ("default load() vs the fastest shipped LiteRT variant, 1 thread(s)",
                   "largest tie of the default's probabilities",
                   "pneumocnn predict(path) vs decode + preprocess + bare LiteRT invoke",
                   "fresh process predict(file) vs bare LiteRT decode + invoke, whole process",
                   "fresh process predict(file) vs bare LiteRT decode + invoke, peak RSS",
                   "default load() vs the fastest ONNX Runtime row, 1 thread(s)"):
        assert wanted in named

    table = (out / "results.md").read_text()
    for heading in ("## Variants", "## Cold start", "## End to end", "## Training input pipeline",
                    "## Targets"):
        assert heading in table
    header = next(line for line in table.splitlines() if line.startswith("| variant |"))
    for column in ("accuracy", "ROC AUC", "sensitivity", "specificity", "agreement %", "max abs diff",
                   "distinct p", "largest tie", "size MB", "median ms", "p95 ms", "batch-32 img/s"):
        assert column in header



@pytest.mark.training
def test_end_to_end_times_the_margin_crop_beside_the_floor_of_a_model_that_declares_it():
    from types import SimpleNamespace

    import keras

    import pneumocnn
    from benchmarks.endtoend import end_to_end

    model = pneumocnn.load()  # the bundled files declare crop "margins"
    assert model.description.preprocessing.crop == "margins"
    keras_model = SimpleNamespace(model=keras.saving.load_model(BUNDLED_RUN / "model.keras"))
    e2e = end_to_end(full_resolution_files()[:2], model, keras_model, passes=1)
    assert e2e["floor, no crop"]["label"] == "decode + resize only, without the model's margin crop"
    assert e2e["floor, no crop"]["median_ms_per_image"] > 0

@pytest.mark.training
@pytest.mark.skipif(not (BUNDLED_RUN / "model.keras").is_file(),
                    reason="benchmarks/bundled-run/model.keras is absent: the bundled model's run "
                           "folder has not been shipped yet")
def test_quick_benchmark_runs_out_of_the_box_on_the_shipped_run(tmp_path):
    """``python -m benchmarks --quick`` from the repository root on the shipped bundled run, with
    no other argument but where to write: evaluation data, training images and full-size files
    default to ../shared/data where it is, else to tests/data (as in a fresh clone, and in CI)."""
    out = tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    if (REPO / "runs" / "pneumocnn" / "model.keras").is_file():  # else it is the default
        command += ["--run", str(BUNDLED_RUN)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert os.path.samefile(results["inputs"]["run"], BUNDLED_RUN)
    assert results["mode"] == "quick" and results["wall_seconds"] > 0
    assert any(v.get("default") for v in results["variants"])
    if not (SHARED_DATA / "chest_xray").is_dir():  # the benchmark's own default
        assert results["inputs"]["shipped_xrays"]
        assert any("no claim" in note for note in results["notes"])
    assert "## Targets" in done.stdout


def test_the_default_run_is_the_trained_one_when_it_is_finished_else_the_shipped_one(tmp_path,
                                                                                      monkeypatch):
    import benchmarks.inputs as inputs

    trained = tmp_path / "runs" / "pneumocnn"
    monkeypatch.setattr(inputs, "TRAINED_RUN", trained)
    assert inputs.default_run() == inputs.BUNDLED_RUN
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")  # a run in progress: no model.keras yet
    assert inputs.default_run() == inputs.BUNDLED_RUN
    (trained / "model.keras").write_bytes(b"")
    assert inputs.default_run() == trained


def test_cpu_features_are_recorded_and_classed():
    from benchmarks.report import cpu_features, isa_class

    found = cpu_features()
    assert set(found) == {"source", "flags", "class"} and found["class"]
    assert isa_class("x86_64", ["avx2", "fma", "f16c"]) == "x86-64 AVX2, no VNNI"
    assert isa_class("x86_64", ["avx2", "avx512f", "avx512_vnni"]) == "x86-64 AVX-512 VNNI"
    assert isa_class("x86_64", ["avx2", "avx_vnni"]) == "x86-64 AVX2, AVX-VNNI"
    assert isa_class("x86_64", ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                                "amx_int8"]) == "x86-64 AVX-512 VNNI, BF16, AMX"
    assert isa_class("aarch64", ["asimd", "asimddp"]) == "ARM dotprod"
    assert isa_class("arm64", ["asimd", "asimddp", "i8mm", "sve"]) == "ARM dotprod, i8mm, SVE"
    assert isa_class("aarch64", ["asimd"]) == "ARM NEON, no dotprod"
    assert isa_class("AMD64", None) == "AMD64 (instruction-set features unknown)"


def test_ties_count_images_sharing_one_probability_and_identical_images_once():
    from benchmarks.quality import distinct_inputs, ties

    assert ties(np.array([0.1, 0.2, 0.3, 0.4])) == {
        "distinct_probabilities": 4, "largest_tie": 0, "largest_tie_pct": 0.0, "tie_images": 4}
    tied = ties(np.array([0.9, 0.9, 0.9, 0.2, 0.2, 0.1, 0.3, 0.4, 0.5, 0.6]))
    assert (tied["distinct_probabilities"], tied["largest_tie"], tied["largest_tie_pct"]) == (7, 3, 30.0)
    pixels = np.zeros((4, 2, 2), np.uint8)
    pixels[1] = 7
    pixels[3] = 7  # a copy of image 1
    assert distinct_inputs(pixels).tolist() == [0, 1]


def test_default_rows_load_the_bundled_folder_only_when_it_holds_the_runs_own_files(
        tmp_path, monkeypatch, variant_cache):
    import benchmarks.variants as variants

    run, bundled = tmp_path / "run", tmp_path / "models"
    run.mkdir()
    bundled.mkdir()
    shutil.copy(TINY_INT8, run / "model-int8.tflite")
    shutil.copy(TINY_FLOAT, run / "model-dynamic-int8.tflite")
    monkeypatch.setattr(variants, "BUNDLED_MODELS", bundled)
    folder, why = variants.default_folder(run)
    assert folder == run and "no .tflite file" in why
    shutil.copy(TINY_INT8, bundled / "pneumonia-int8.tflite")
    assert variants.default_folder(run)[0] == bundled
    (bundled / "pneumonia-float16.tflite").write_bytes(TINY_INT8.read_bytes() + b"x")
    folder, why = variants.default_folder(run)
    assert folder == run and "pneumonia-float16.tflite" in why

    default = variants.load_default(run, tmp_path)
    assert set(default.models) == set(variants.thread_counts())
    assert (tmp_path / "variant-cache" / "variants.json").is_file()  # in the benchmark's folder,
    assert not variant_cache.exists()  # never in the cache $PNEUMOCNN_CACHE_DIR names
    rows = variants.default_variants(default)
    assert [row.key for row in rows] == [f"default-{t}t" for t in variants.thread_counts()]
    assert all(row.run is not None and row.bare is not None for row in rows)


@pytest.mark.parametrize("variant", ["int8", "float16"])
def test_each_operator_cut_out_alone_computes_what_it_computes_in_the_whole_model(variant):
    """benchmarks.operators times each operator of a file as a model of its own: given the input
    the operator gets inside the whole model, it must give the same output, to the bit (float16
    weights unpacked as the interpreter unpacks them)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from benchmarks.operators import operators, single_operator

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES  # one kernel set on both sides
    content = (REPO / "pneumocnn" / "models" / f"pneumonia-{variant}.tflite").read_bytes()
    whole = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                        experimental_op_resolver_type=builtin)
    whole.allocate_tensors()
    image = np.random.default_rng(0).random((1, 150, 150, 1), np.float32)
    whole.set_tensor(whole.get_input_details()[0]["index"], image)
    whole.invoke()
    details = {op["index"]: op for op in whole._get_ops_details()}
    found = operators(content)
    assert [op["op"] for op in found[:2]] == ["CONV_2D", "MAX_POOL_2D"]
    assert sum(op["multiply_adds"] for op in found) == 90_225_344  # benchmarks.limits' count
    for op in found:
        alone = Interpreter(model_content=single_operator(content, op["index"]),
                            experimental_op_resolver_type=builtin)
        alone.allocate_tensors()
        inputs = alone.get_input_details()
        assert len(inputs) == 1, op
        alone.set_tensor(inputs[0]["index"], whole.get_tensor(details[op["index"]]["inputs"][0]))
        alone.invoke()
        expected = whole.get_tensor(details[op["index"]]["outputs"][0])
        assert np.array_equal(alone.get_tensor(alone.get_output_details()[0]["index"]), expected), op


def test_the_variant_latency_tool_times_every_file_at_every_thread_count(tmp_path):
    from benchmarks.latency import latency_table, variant_latency

    folder = tmp_path / "variants"
    folder.mkdir()
    for tiny in (TINY_INT8, TINY_FLOAT):
        shutil.copy(tiny, folder / tiny.name)
    result = variant_latency([TINY_INT8, TINY_FLOAT], [1, 2], rounds=3, warmup=1, folders=[folder])
    rows = {(r["variant"].startswith("load() default"), Path(r["file"]).name, r["threads"])
            for r in result["rows"]}
    assert {(False, f.name, t) for f in (TINY_INT8, TINY_FLOAT) for t in (1, 2)} < rows
    assert sum(default for default, _, _ in rows) == 2  # one choice per thread count
    assert all(r["median_ms"] > 0 and r["bare_median_ms"] > 0 for r in result["rows"])
    table = latency_table(result)
    assert table.count("\n") == 7 and "1.00x" in table  # header, rule, six rows


def test_timing_in_turns_times_each_callable_alone_in_blocks():
    from benchmarks.latency import in_turns

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times = in_turns(calls, rounds=10, warmup=5, turns=5)
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 10, "b": 10, "c": 10}
    runs = [1]
    for before, name in zip(order, order[1:], strict=False):
        runs[-1:] = [runs[-1] + 1] if name == before else [runs[-1], 1]
    assert min(runs) >= 3  # a block: at least one untimed call and two timed ones, never mixed
    assert len(runs) >= 11  # five turns of three blocks (a turn's last block may meet the next's first)


def test_the_fma_peak_and_the_share_of_it():
    from benchmarks.limits import clock_ghz, fma_peak, share_of_peak

    ghz = clock_ghz()
    if ghz is None:
        pytest.skip("no cpu MHz in /proc/cpuinfo here")
    peak = fma_peak(1, ["avx2", "fma"])
    assert peak["multiply_adds_per_s"] == pytest.approx(ghz * 1e9 * 2 * 8)
    assert fma_peak(1, ["avx2", "fma", "avx512f"])["multiply_adds_per_s"] == pytest.approx(
        2 * peak["multiply_adds_per_s"])
    assert fma_peak(1, ["asimd"]) is None and fma_peak(1, None) is None
    per_ms = peak["multiply_adds_per_s"] / 1e3
    assert share_of_peak(int(per_ms), 2.0, peak) == pytest.approx(0.5)
    assert share_of_peak(None, 2.0, peak) is None


def test_every_simulated_shift_changes_a_real_xray_and_keeps_it_gray():
    from PIL import Image

    from studies.shifts import SHIFTS

    xray = Image.open(real_images("NORMAL", 1)[0]).convert("L")
    for name, shift in SHIFTS.items():
        shifted = shift(xray)
        assert shifted.mode == "L", name
        assert shifted.size == xray.size or name.startswith("zoom"), name
        assert not np.array_equal(np.asarray(shifted.resize(xray.size)), np.asarray(xray)), name


@pytest.mark.training
def test_study_scores_runs_and_tabulates_folds(tiny_run, tiny_data, tmp_path):
    """A run's scores.json, and the table over two folds of one configuration: mean +- sd."""
    import json
    import shutil

    from studies.study import BY_NAME, main, score_run

    for fold in (0, 1):
        shutil.copytree(tiny_run.run_dir, tmp_path / "runs" / "small-bn" / f"fold-{fold}",
                        ignore=shutil.ignore_patterns("cache", "checkpoints", ".lock"))
    scores = score_run(tmp_path / "runs" / "small-bn" / "fold-0", tiny_data)
    assert set(scores["shifts"]) == set(__import__("studies.shifts").shifts.SHIFTS)
    assert scores["official_val"] is None  # tiny_data has no val folder
    validation = scores["validation"]["at_model_threshold"]
    assert validation["n"] == tiny_run.metrics["validation"]["n"]
    assert validation["accuracy"] == pytest.approx(tiny_run.metrics["tflite"]["int8"]["accuracy"])
    # the second fold scores differently: make its figures differ to see the spread
    changed = json.loads(json.dumps(scores))
    changed["validation"]["at_model_threshold"]["roc_auc"] = 0.5
    (tmp_path / "runs" / "small-bn" / "fold-1" / "scores.json").write_text(json.dumps(changed))
    assert main(["--report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| small-bn |"))
    auc = (validation["roc_auc"] + 0.5) / 2
    assert f"| 2 | {auc:.3f} ± " in row
    assert BY_NAME["small-bn"].note in table
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())) == {"small-bn"}



@pytest.mark.training
def test_robustness_tables_runs_and_the_ensemble_of_the_chosen_ones(tiny_run, tiny_data, tmp_path):
    """Two runs on one split, no TTA rows, an ensemble row of the runs named by --ensemble."""
    from studies.robustness import main

    runs = [tmp_path / name for name in ("a", "b")]
    for run in runs:
        shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("cache", "checkpoints", ".lock"))
    args = [*map(str, runs), "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--no-tta"]
    recipes = ["--recipe", "first", str(runs[0]), "--recipe", "second", str(runs[1])]
    assert main([*args, "--ensemble", *map(str, runs), *recipes]) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| ensemble of {runs[0]} + {runs[1]} |" in table
    assert "+ TTA" not in table and "--no-tta --ensemble" in table
    assert "| second | 1 |" in table
    scored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert scored[str(runs[0])]["conditions"] == scored[str(runs[1])]["conditions"]
    assert scored["recipes"]["second"]["difference"] == 0.0  # the same model twice
    with pytest.raises(SystemExit):
        main([*args, "--ensemble", str(tmp_path / "elsewhere")])
    with pytest.raises(SystemExit):
        main([*args, "--recipe", "alone"])
    config = json.loads((runs[1] / "config.json").read_text())
    (runs[1] / "config.json").write_text(json.dumps({**config, "validation": "earliest"}))
    with pytest.raises(SystemExit, match="validate on different images"):
        main(args)


def test_recipes_are_compared_by_their_seeds_mean_auc_with_a_patient_interval():
    from studies.robustness import Row, compare_recipes, recipe_table

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    patients = [f"p{i // 2}" for i in range(200)]  # two images per patient

    def seed(noise: float) -> Row:
        scores = labels + rng.normal(0, noise, labels.size)
        return Row("run", {"none": scores}, 0.5)

    compared = compare_recipes({"sharp": [seed(0.3), seed(0.3)], "blurred": [seed(1.5), seed(1.5)],
                                "same": [seed(0.3), seed(0.3)]}, labels, patients)
    assert compared["sharp"]["difference"] == 0.0 and compared["sharp"]["interval"] == [0.0, 0.0]
    low, high = compared["blurred"]["interval"]
    assert high < 0 and low < compared["blurred"]["difference"] < high
    low, high = compared["same"]["interval"]
    assert low < 0 < high  # two more seeds of the same recipe: no difference to claim
    assert compared["blurred"]["runs"] == 2 and "| blurred | 2 |" in "\n".join(recipe_table(compared))


@pytest.mark.training
def test_the_default_recipe_is_the_studys_chosen_configuration():
    import dataclasses

    from pneumocnn.training.trainer import TrainingConfig, make_config
    from studies.study import BY_NAME, CHOSEN, study_settings

    studied = make_config("seed", **study_settings(BY_NAME[CHOSEN], fold=0))
    assert dataclasses.replace(studied, fold=None) == TrainingConfig()


@pytest.mark.training
def test_candidate_architectures_export_as_pneumocnn_would_and_are_tabled(tmp_path):
    """benchmarks.architectures: a small candidate exports with one input channel in float32
    and int8 (float head), loads in pneumocnn, and the table compares rows with the first."""
    from benchmarks import architectures
    from pneumocnn.core.modelfile import read_tflite_description

    model = architectures._named("small-sep", 32)
    for quantization in architectures.QUANTIZATIONS:
        description = read_tflite_description(architectures.export(model, quantization), "candidate")
        assert description.preprocessing.input_shape == (32, 32, 1)
        assert description.info["quantization"] == quantization
    first = next(iter(architectures.CANDIDATES))
    rows = [{"candidate": first, "quantization": "int8", "threads": 1, "size_bytes": 2048,
             "parameters": 10, "median_ms": 2.0, "p95_ms": 3.0},
            {"candidate": "other", "quantization": "int8", "threads": 1, "size_bytes": 1024,
             "parameters": 5, "median_ms": 1.0, "p95_ms": 1.5}]
    machine = {"cpu": "CPU", "cpu_features": {"class": "x86-64 AVX2, no VNNI"}, "cores": 2,
               "versions": {"ai-edge-litert": "2.3.0"}}
    text = architectures.table(rows, machine)
    assert "| other | int8 | 1 | 5 | 1 | 1.00 | 1.50 | 0.50x |" in text


def test_site_calibration_draws_whole_patients_at_the_sites_share():
    """studies.site_calibration: a draw keeps every normal, thins the pneumonias to the share
    0.625, and splits the site by whole patients into at most 100 calibration images and the
    rest."""
    from studies.site_calibration import SHARE, draw

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(135, int), np.ones(388, int)]
    patients = rng.integers(0, 265, labels.size)
    for seed in range(5):
        calibration, rest = draw(np.random.default_rng(seed), labels, patients, 100)
        site = np.r_[calibration, rest]
        assert len(calibration) == 100 and len(set(site)) == len(site) == 360
        assert (labels[site] == 0).sum() == 135 and labels[site].mean() == pytest.approx(SHARE)
        assert not set(patients[calibration]) & set(patients[rest])


def test_the_plot_says_what_its_accuracy_was_measured_on(tmp_path):
    """Every variant gets a row of its own (ties no longer hide each other); the title calls
    the shipped X-rays of tests/data training images, never held out."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from benchmarks.report import _accuracy_source, plot

    results = json.loads((REPO / "benchmarks" / "results" / "x86-avx2-epyc" / "results.json").read_text())
    source = results["inputs"]["evaluation_source"]
    assert "validation split" in source
    assert _accuracy_source(results["inputs"]) == f"pneumocnn variants; accuracy on 523 X-rays: {source}"
    shipped = {**results["inputs"], "shipped_xrays": True, "evaluation": {"n": 48}}
    title = _accuracy_source(shipped)
    assert "48 X-rays of tests/data" in title and "not held out" in title and "held-out" not in title
    plot(results, tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as picture:
        rows = len([v for v in results["variants"] if not v["error"]])
        assert picture.height > 40 * rows  # a row per variant


def test_a_site_b_ensemble_is_its_members_mean_logit_at_their_mean_threshold():
    from studies.robustness import Row
    from studies.site_b import ensemble_row

    members = [Row("a", {"none": np.array([0.2, 0.9])}, 0.5),
               Row("b", {"none": np.array([0.8, 0.9])}, 0.9)]
    row = ensemble_row("a + b", members)
    assert row.probabilities["none"] == pytest.approx([0.5, 0.9])  # logit(0.2) = -logit(0.8)
    assert row.threshold == pytest.approx(1 / (1 + np.exp(-np.log(0.9 / 0.1) / 2)))


@pytest.mark.training
def test_the_peer_rows_time_and_profile_onnx_runtime_beside_litert(tiny_run, tmp_path):
    from benchmarks.latency import latency_table, variant_latency
    from benchmarks.peer_operators import main

    run = tiny_run.run_dir
    result = variant_latency([run / "model-float16.tflite"], [1], rounds=3, warmup=1, peers=run)
    runtimes = {row["variant"]: row["runtime"] for row in result["rows"]}
    assert runtimes == {"float16": "LiteRT", "ONNX Runtime float32": "ONNX Runtime",
                        "ONNX Runtime int8 (static QDQ)": "ONNX Runtime"}
    assert all(row["median_ms"] > 0 for row in result["rows"])
    assert "| ONNX Runtime int8 (static QDQ) | ONNX Runtime |" in latency_table(result)

    out = tmp_path / "peers"
    profiled = main(["--run", str(run), "--runs", "10", "--out", str(out)])
    assert set(profiled["files"]) == {"ONNX Runtime float32", "ONNX Runtime int8 (static QDQ)"}
    for nodes in profiled["files"].values():
        assert {"Conv", "QLinearConv"} & {node["op"] for node in nodes}
        assert sum(node["median_ms"] for node in nodes) > 0
    assert (out / "peer_operators.md").read_text().count("sum of the nodes") == 2
