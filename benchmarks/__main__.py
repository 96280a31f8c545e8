"""``python -m benchmarks [--quick] [--run DIR] [--data FOLDER]``: run every benchmark once, in
one process run, print the markdown table and write ``benchmarks/results/``.

Out of the box (a fresh clone: no trained run, no ``../shared``) it measures the bundled
model's run shipped in ``benchmarks/bundled-run`` on the X-rays shipped in ``tests/data``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import REPO, RESULTS, report  # noqa: E402
from benchmarks.inputs import (  # noqa: E402
    BUNDLED_RUN,
    FULL_RESOLUTION,
    TEST_FULL_RESOLUTION,
    TEST_XRAYS,
    default_full_resolution,
    default_run,
    describe_images,
    folder_images,
    have_chest_xray,
    run_splits,
    shipped_xrays,
    subsample,
)


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to take; ``None`` means all images."""

    evaluation_images: int | None
    latency_calls: int
    warmup: int
    throughput_rounds: int
    coldstart_repeats: int
    e2e_files: int | None
    e2e_passes: int
    pipeline_images: int | None
    pipeline_epochs: int


CALIBRATION_IMAGES = 100  # training X-rays that calibrate ONNX Runtime's int8 quantization
FULL = Plan(None, 300, 20, 15, 5, None, 5, None, 3)
QUICK = Plan(64, 30, 5, 3, 1, 6, 2, 96, 1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--run", type=Path, default=default_run(),
                        help="trained run folder with model.keras, model-*.tflite, config.json "
                             "(default: runs/pneumocnn in the repository, where `pneumocnn train` "
                             "writes, when it holds model.keras; else benchmarks/bundled-run, the "
                             "bundled model's run)")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled evaluation folder {NORMAL,PNEUMONIA}/ (default: the run's "
                             "patient-level validation split of ../shared/data/chest_xray; without "
                             "it, the X-rays shipped in tests/data/xrays)")
    parser.add_argument("--train-data", type=Path, default=None,
                        help="labelled folder for the training pipeline benchmark (default: the "
                             "run's training side of that split; without it, tests/data/xrays)")
    parser.add_argument("--full-resolution", type=Path, default=default_full_resolution(),
                        help="folder of full-size X-ray files for the end-to-end benchmark "
                             "(default: ../shared/data/full_resolution, else tests/data/full_resolution)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results are written (default: benchmarks/results, or "
                             "benchmarks/results/quick with --quick, which git ignores)")
    parser.add_argument("--quick", action="store_true", help="few images and calls (development)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    return args


def measure(args: argparse.Namespace, plan: Plan, work: Path) -> dict:
    """Every measurement; returns the results dict the report is made from."""
    from benchmarks.coldstart import cold_start
    from benchmarks.endtoend import end_to_end
    from benchmarks.latency import batch1_latency, throughput
    from benchmarks.pipeline import training_pipelines
    from benchmarks.quality import score
    from benchmarks.variants import build_variants, load_default, load_keras, variant_cache
    from pneumocnn.core.labelled_data import index_folder
    from pneumocnn.training.data import decode_all
    from pneumocnn.training.settings import saved_config

    run_dir = args.run.resolve()
    config = saved_config(run_dir)
    keras_model = load_keras(run_dir)
    spec, threshold = keras_model.description.preprocessing, keras_model.description.threshold
    splits = None
    if not (args.data and args.train_data):
        splits = run_splits(run_dir) if have_chest_xray() else shipped_xrays()
    if args.data:
        evaluation, source = folder_images(args.data), f"folder {args.data}"
    else:
        evaluation, source = splits.validation, splits.source
    evaluation = subsample(evaluation, plan.evaluation_images)
    decoded = decode_all(evaluation, spec, None)
    inputs = decoded.pixels  # uint8 (N, H, W): what predict has once a file is decoded

    if args.train_data:
        train_images, train_source = folder_images(args.train_data), f"folder {args.train_data}"
    else:
        train_images = splits.train
        train_source = (splits.source if splits.train is splits.validation
                        else f"the run's training side of {splits.source}")
    calibration = decode_all(subsample(train_images, CALIBRATION_IMAGES), spec, None).pixels

    log("pneumocnn.load(folder) for each thread count (its choice of variant, made afresh)")
    default = load_default(run_dir, work)
    log(f"{len(inputs)} evaluation images; building variants (ONNX Runtime int8 calibrated on "
        f"{len(calibration)} training images)")
    variants = build_variants(keras_model, run_dir, work, default, calibration)
    log("accuracy")
    quality = score(variants, inputs, decoded.labels, threshold)
    log(f"batch-1 latency, {plan.latency_calls} calls of each variant, the variants taking turns")
    latency = batch1_latency(variants, inputs, plan.latency_calls, plan.warmup)
    log("batch-32 throughput")
    batches = throughput(variants, inputs, plan.throughput_rounds, max(1, plan.warmup // 5))
    files = list(index_folder(args.full_resolution).paths)[: plan.e2e_files] if plan.e2e_files else \
        list(index_folder(args.full_resolution).paths)
    log(f"end to end on {len(files)} full-size files")
    e2e = end_to_end(files, default.all_cores, keras_model, plan.e2e_passes)
    log("cold start")
    with variant_cache(work / "variant-cache"):  # the choice load_default remembered
        cold = cold_start(default.folder, Path(default.all_cores.path), keras_model.path, files[0],
                          plan.coldstart_repeats)
    train_images = subsample(train_images, plan.pipeline_images)
    log(f"training pipeline: {plan.pipeline_epochs} epoch(s) each on {len(train_images)} images")
    pipeline = training_pipelines(train_images, config, work, plan.pipeline_epochs)
    pipeline["source"] = train_source
    return {
        "inputs": {"run": str(args.run), "evaluation": describe_images(evaluation),
                   "evaluation_source": source, "evaluation_decoded": len(inputs),
                   "threshold": threshold, "full_resolution": str(args.full_resolution),
                   "shipped_xrays": _same_folder(evaluation, TEST_XRAYS),
                   "shipped_xrays_train": _same_folder(train_images, TEST_XRAYS),
                   "default_folder": str(default.folder), "default_folder_reason": default.why,
                   "onnx_calibration_images": len(calibration)},
        "variants": [v.summary() for v in variants],
        "quality": quality,
        "latency": latency,
        "throughput": batches,
        "end_to_end": e2e,
        "cold_start": cold,
        "pipeline": pipeline,
    }


def notes(args: argparse.Namespace, plan: Plan, results: dict) -> list[str]:
    """Caveats that belong next to the table."""
    found = []
    if plan is QUICK:
        found.append("Quick mode: few images and calls; figures are for development, not claims.")
    other = results.get("other_processes_cores")
    if other is not None and other > 0.25:
        found.append(f"Other processes kept {other:.2f} of {os.cpu_count()} cores busy on average during "
                     "this run: timings, above all multi-thread ones, are noisier and slower than on an "
                     "idle machine; CPU seconds and bare-call ratios are the steadier figures.")
    inputs = results["inputs"]
    if inputs.get("shipped_xrays"):
        absent = "" if have_chest_xray() else " (../shared/data/chest_xray is absent here)"
        pipeline = " The training pipeline ran on them too." if inputs.get("shipped_xrays_train") else ""
        found.append(f"Evaluated on the 24 + 24 X-rays shipped in tests/data/xrays{absent}. They come "
                     "from chest_xray/train and are training images of the bundled model, so accuracy, "
                     "sensitivity and specificity on them are no claim about new patients: what this "
                     "run shows is each variant against its float twin (agreement, max abs diff, "
                     f"ties, latency, size).{pipeline}")
    if Path(inputs["full_resolution"]).resolve() == TEST_FULL_RESOLUTION.resolve():
        absent = "" if FULL_RESOLUTION.is_dir() else " (../shared/data/full_resolution is absent here)"
        found.append("End to end and cold start on the 3 full-size files shipped in "
                     f"tests/data/full_resolution{absent}.")
    found += _bundled_notes(args.run)
    return found


def _same_folder(images, folder: Path) -> bool:
    """Whether every image lies in ``folder``."""
    root = folder.resolve()
    return bool(len(images)) and all(root in Path(path).resolve().parents for path in images.paths)


def _bundled_notes(run: Path) -> list[str]:
    """Which run file each bundled model file is byte-identical to, if any."""
    ours = {path.read_bytes(): path.name for path in sorted(run.glob("*.tflite"))}
    notes = []
    for bundled in sorted((REPO / "pneumocnn" / "models").glob("*.tflite")):
        twin = ours.get(bundled.read_bytes())
        notes.append(f"The bundled pneumocnn/models/{bundled.name} is byte-identical to the run's "
                     f"{twin}." if twin else f"The bundled pneumocnn/models/{bundled.name} is NOT "
                     "byte-identical to any .tflite file of the run.")
    return notes


def log(message: str) -> None:
    """Progress on stderr, so stdout is the table alone."""
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, write the results and print the table; returns the results."""
    from benchmarks.targets import evaluate_targets

    args = parse(argv)
    if not (args.run / "model.keras").exists():
        shipped = ("; the bundled model's run should be in benchmarks/bundled-run (is this a "
                   "complete checkout?)" if args.run.resolve() == BUNDLED_RUN.resolve() else "")
        raise SystemExit(f"{args.run}: no trained run here (model.keras, model-*.tflite, "
                         f"config.json){shipped}; make one with `pneumocnn train "
                         "../shared/data/chest_xray` (into runs/pneumocnn) or pass --run")
    plan = QUICK if args.quick else FULL
    started, counters = time.perf_counter(), report.cpu_seconds()
    results = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": report.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="pneumocnn-bench-") as work:
        results.update(measure(args, plan, Path(work)))
    results["load_average_at_end"] = report.load_average()
    if counters and (after := report.cpu_seconds()):
        elapsed = time.perf_counter() - started
        results["other_processes_cores"] = ((after[0] - counters[0]) - (after[1] - counters[1])) / elapsed
    results["targets"] = evaluate_targets(results)
    results["notes"] = notes(args, plan, results)
    results["wall_seconds"] = time.perf_counter() - started
    print(report.write(results, args.out))
    return results


if __name__ == "__main__":
    main()
