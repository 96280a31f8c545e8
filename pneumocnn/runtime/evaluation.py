"""``evaluate``: score a model on a labelled folder and report metrics at its threshold."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumocnn.core import strictjson
from pneumocnn.core.durable_files import write_text
from pneumocnn.core.errors import MissingDependencyError
from pneumocnn.core.labelled_data import LabelledImages, index_folder
from pneumocnn.core.metrics import binary_metrics, roc_curve
from pneumocnn.runtime.model import Model, Prediction, load

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics at the threshold used, every prediction, and the files that failed;
    ``figures_error`` says why the figures were not drawn (matplotlib missing), or is None."""

    metrics: dict
    predictions: list[Prediction]
    truth: list[str]
    figures_error: str | None = None

    @property
    def failed(self) -> list[Prediction]:
        """Predictions whose input could not be read."""
        return [p for p in self.predictions if not p.ok]

    def __str__(self) -> str:
        m = self.metrics
        return (f"{m['n']} images: accuracy {m['accuracy']:.4f}, ROC AUC {m['roc_auc']:.4f}, "
                f"sensitivity {m['sensitivity']:.4f}, specificity {m['specificity']:.4f}, "
                f"precision {m['precision']:.4f}, F1 {m['f1']:.4f} at threshold "
                f"{m['threshold']:.4f}; confusion [[TN, FP], [FN, TP]] = {m['confusion']}"
                + (f"; {len(self.failed)} unreadable" if self.failed else ""))


def evaluate(
    model: Model | str | os.PathLike,
    folder: str | os.PathLike,
    *,
    threshold: float | None = None,
    out: str | os.PathLike | None = None,
) -> Evaluation:
    """Score ``model`` (a :class:`Model` or a model file path) on ``folder/{NORMAL,PNEUMONIA}``.

    Returns an :class:`Evaluation`; unreadable images are listed, not scored. With ``out``,
    writes ``metrics.json``, ``predictions.csv``, ``roc.png``, ``confusion.png`` and
    ``reliability.png`` there; without matplotlib (``pip install 'pneumocnn[plots]'``), the
    figures are left out, the rest written, and ``figures_error`` says so.
    """
    if not isinstance(model, Model):
        model = load(model)
    images, predictions = score_labelled(model, folder, threshold)
    scored = np.array([p.ok for p in predictions])
    probabilities = np.array([p.probability for p in predictions])[scored]
    cutoff = predictions[0].threshold
    metrics = binary_metrics(images.labels[scored], probabilities, cutoff)
    metrics["model"] = model.path
    metrics["unreadable"] = [f"{p.source}: {p.error}" for p in predictions if not p.ok]
    truth = [model.labels[k] for k in images.labels]
    result = Evaluation(metrics, predictions, truth)
    if out is not None:
        _write(result, images.labels[scored], probabilities, Path(out), model.labels)
    return result


def score_labelled(model: Model, folder: str | os.PathLike, threshold: float | None = None
                   ) -> tuple[LabelledImages, list[Prediction]]:
    """Index ``folder/{NORMAL,PNEUMONIA}`` and score each image with ``model``, in the
    index's order; an unreadable image gets a :class:`Prediction` with ``error`` set. Raises
    ``ValueError`` when none could be read."""
    images = index_folder(folder)
    if [n.upper() for n in images.class_names] != [n.upper() for n in model.labels]:
        log.warning("folder classes %s are taken as the model's labels %s",
                    images.class_names, model.labels)
    predictions = list(model.predict_iter([str(p) for p in images.paths], threshold=threshold))
    if not any(p.ok for p in predictions):
        raise ValueError(f"{folder}: none of the images could be read")
    return images, predictions


def _write(result: Evaluation, labels, probabilities, out: Path, names) -> None:
    from pneumocnn.core.plots import plot_confusion, plot_reliability, plot_roc

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "metrics.json", strictjson.dumps(result.metrics, indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "truth", "label", "probability", "threshold", "error"])
    for prediction, truth in zip(result.predictions, result.truth, strict=True):
        writer.writerow([prediction.source, truth, prediction.label or "",
                         prediction.probability, prediction.threshold, prediction.error or ""])
    write_text(out / "predictions.csv", buffer.getvalue())
    fpr, tpr = roc_curve(labels, probabilities)
    try:
        plot_roc(fpr, tpr, result.metrics["roc_auc"], out / "roc.png")
        plot_confusion(result.metrics["confusion"], names, out / "confusion.png")
        plot_reliability(labels, probabilities, out / "reliability.png")
    except MissingDependencyError as error:
        result.figures_error = str(error)
