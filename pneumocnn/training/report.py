"""What a finished run says about itself: ``history.csv``, ``metrics.json`` (with the scores
of its ``.tflite`` files), ``report.md``, ``curves.png`` and ``reliability.png``."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pneumocnn.core import strictjson
from pneumocnn.core.durable_files import write_text
from pneumocnn.core.labelled_data import LabelledImages
from pneumocnn.core.metrics import binary_metrics
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.core.plots import plot_history, plot_reliability
from pneumocnn.runtime.model import load
from pneumocnn.training.calibration import TrainedRun
from pneumocnn.training.data import DecodedImages
from pneumocnn.training.splits import describe_split, summary


def score_tflite(paths: dict[str, Path], validation: DecodedImages) -> dict[str, dict]:
    """Validation metrics of each ``.tflite`` file, through the runtime, at its own threshold."""
    scores = {}
    for quantization, path in paths.items():
        model = load(path)
        probabilities = model.probabilities(validation.pixels)  # already decoded and normalised
        scores[quantization] = binary_metrics(validation.labels, probabilities, model.threshold)
    return scores


def write_reports(run_dir: Path, run: TrainedRun, description: ModelDescription, metrics: dict,
                  images: tuple[LabelledImages, LabelledImages]) -> None:
    """Write the run's ``history.csv``, ``metrics.json``, ``curves.png``, ``report.md`` and
    ``reliability.png``; ``images`` are the ``(train, validation)`` images of the run."""
    history = run.history
    columns = list(history[0]) if history else ["epoch"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / "history.csv", buffer.getvalue())
    write_text(run_dir / "metrics.json", strictjson.dumps(metrics, indent=1))
    if history:
        plot_history(history, run_dir / "curves.png")
    write_text(run_dir / "report.md", report_text(run, description, metrics, images))
    plot_reliability(run.validation_labels, description.calibrate(run.probabilities),
                     run_dir / "reliability.png")


def report_text(run: TrainedRun, description: ModelDescription, metrics: dict,
                images: tuple[LabelledImages, LabelledImages]) -> str:
    """The Markdown of ``report.md``: data, epochs, exported epoch, calibration, threshold and
    the validation figures of the Keras model and each ``.tflite`` file."""
    config, history = run.config, run.history
    train_images, val_images = images
    val = metrics["validation"]
    seconds = [row["seconds"] for row in history]
    where = description.info.get("provenance", {}).get("distribution")
    lines = [
        f"# Training report: {description.info['architecture']}",
        "",
        f"- train: {summary(train_images)}",
        f"- validation ({describe_split(config)}): {summary(val_images)}",
        f"- epochs: {len(history)}; median seconds per epoch: "
        f"{np.median(seconds) if seconds else float('nan'):.1f}",
        *([f"- trained on {where['workers']} worker(s), {where['replicas']} replica(s) "
           f"({where['strategy']}): global batch {where['global_batch']}, "
           f"{where['per_replica_batch']} per replica"] if where else []),
        f"- exported epoch: {run.exported_epoch}"
        + (" (lowest validation loss)" if config.keep_best else " (the last)")
        + (f", as the moving average of the weights over the training steps (momentum "
           f"{config.ema_momentum})" if config.ema_momentum is not None else "")
        + ("; batch-norm statistics re-estimated on the training images without augmentation"
           if config.recalibrate_batchnorm else ""),
        *([f"- distilled: trained on the mean probability of {len(config.teachers)} teacher(s) "
           f"on each augmented image, not on the labels: {', '.join(config.teachers)}"]
          if config.teachers else []),
        f"- calibration: sigmoid(logit(p) / {description.temperature:.3f} "
        f"{description.bias:+.3f}), fitted on validation",
        f"- threshold: {description.threshold:.4f} ({description.info['threshold_source']})",
        "",
        "| model | accuracy | ROC AUC | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|",
        _row("Keras (float)", val),
        *(_row(f"TFLite {q}", m) for q, m in metrics["tflite"].items()),
        "",
        f"Confusion matrix [[TN, FP], [FN, TP]] of the Keras model: {val['confusion']}",
        "",
        "At the threshold for sensitivity "
        f">= {config.target_sensitivity}: {_row('Keras', metrics['validation_at_sensitivity_threshold'])}",
        "",
        "Settings: `" + json.dumps(asdict(config)) + "`",
        "",
    ]
    return "\n".join(lines)


def _row(name: str, m: dict) -> str:
    return (f"| {name} | {m['accuracy']:.4f} | {m['roc_auc']:.4f} | {m['sensitivity']:.4f} | "
            f"{m['specificity']:.4f} | {m['ece']:.4f} |")

