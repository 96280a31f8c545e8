"""``python -m benchmarks [--quick] [--run DIR] [--data FOLDER]``: run every benchmark once, in
one process run, print the markdown table and write ``benchmarks/results/``."""

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
    FULL_RESOLUTION,
    describe_images,
    folder_images,
    run_splits,
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


FULL = Plan(None, 300, 20, 15, 5, None, 5, None, 3)
QUICK = Plan(64, 40, 5, 3, 1, 6, 1, 96, 1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "pneumocnn",
                        help="trained run folder with model.keras, model-*.tflite, config.json "
                             "(default: runs/pneumocnn in the repository, where `pneumocnn train` writes)")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled evaluation folder {NORMAL,PNEUMONIA}/ (default: the run's "
                             "patient-level validation split of ../shared/data/chest_xray)")
    parser.add_argument("--train-data", type=Path, default=None,
                        help="labelled folder for the training pipeline benchmark (default: the "
                             "run's training side of that split)")
    parser.add_argument("--full-resolution", type=Path, default=FULL_RESOLUTION,
                        help="folder of full-size X-ray files for the end-to-end benchmark")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--quick", action="store_true", help="few images and calls (development)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, plan: Plan, work: Path) -> dict:
    """Every measurement; returns the results dict the report is made from."""
    from benchmarks.coldstart import cold_start
    from benchmarks.endtoend import end_to_end
    from benchmarks.latency import batch1_latency, throughput
    from benchmarks.pipeline import training_pipelines
    from benchmarks.quality import score
    from benchmarks.variants import build_variants, load_keras
    from pneumocnn.core.folders import index_folder
    from pneumocnn.training.data import decode_all
    from pneumocnn.training.settings import saved_config

    run_dir = args.run.resolve()
    config = saved_config(run_dir)
    keras_model = load_keras(run_dir)
    spec, threshold = keras_model.description.preprocessing, keras_model.description.threshold
    splits = None if args.data and args.train_data else run_splits(run_dir)
    if args.data:
        evaluation, source = folder_images(args.data), f"folder {args.data}"
    else:
        evaluation, source = splits.validation, splits.source
    evaluation = subsample(evaluation, plan.evaluation_images)
    decoded = decode_all(evaluation, spec, None)
    inputs = decoded.pixels  # uint8 (N, H, W): what predict has once a file is decoded

    log(f"{len(inputs)} evaluation images; building variants")
    variants = build_variants(keras_model, run_dir, work)
    log("accuracy")
    quality = score(variants, inputs, decoded.labels, threshold)
    log(f"batch-1 latency, {plan.latency_calls} interleaved rounds")
    latency = batch1_latency(variants, inputs, plan.latency_calls, plan.warmup)
    log("batch-32 throughput")
    batches = throughput(variants, inputs, plan.throughput_rounds, max(1, plan.warmup // 5))
    int8 = run_dir / "model-int8.tflite"
    files = list(index_folder(args.full_resolution).paths)[: plan.e2e_files] if plan.e2e_files else \
        list(index_folder(args.full_resolution).paths)
    log(f"end to end on {len(files)} full-size files")
    e2e = end_to_end(files, int8, keras_model, plan.e2e_passes)
    log("cold start")
    cold = cold_start(int8, keras_model.path, files[0], plan.coldstart_repeats)
    train_images = folder_images(args.train_data) if args.train_data else splits.train
    train_images = subsample(train_images, plan.pipeline_images)
    log(f"training pipeline: {plan.pipeline_epochs} epoch(s) each on {len(train_images)} images")
    pipeline = training_pipelines(train_images, config, work, plan.pipeline_epochs)
    return {
        "inputs": {"run": str(args.run), "evaluation": describe_images(evaluation),
                   "evaluation_source": source, "evaluation_decoded": len(inputs),
                   "threshold": threshold, "full_resolution": str(args.full_resolution)},
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
    bundled = REPO / "pneumocnn" / "models" / "pneumonia-int8.tflite"
    int8 = args.run / "model-int8.tflite"
    if bundled.is_file():
        same = bundled.read_bytes() == int8.read_bytes()
        found.append(f"The bundled model {'is' if same else 'is NOT'} byte-identical to the run's int8 file.")
    return found


def log(message: str) -> None:
    """Progress on stderr, so stdout is the table alone."""
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, write the results and print the table; returns the results."""
    from benchmarks.targets import evaluate_targets

    args = parse(argv)
    if not (args.run / "model.keras").exists():
        raise SystemExit(f"{args.run}: no trained run here (model.keras, model-*.tflite, "
                         "config.json); make one with `pneumocnn train ../shared/data/chest_xray "
                         f"--out {args.run}` (about 6 min on 2 cores) or pass --run")
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
