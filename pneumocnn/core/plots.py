"""PNG figures for run and evaluation reports (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import atomic_write
from pneumocnn.core.errors import MissingDependencyError
from pneumocnn.core.metrics import reliability_bins


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            "plots need matplotlib: pip install 'pneumocnn[plots]'"
        ) from error
    return plt


def _save(figure, path: Path) -> None:
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)


def plot_history(history: list[dict], path: str | Path) -> None:
    """Accuracy and loss per epoch, training against validation, as one PNG."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in zip(axes, ("accuracy", "loss"), strict=True):
        axis.plot(epochs, [row.get(key, np.nan) for row in history], label="train")
        axis.plot(epochs, [row.get(f"val_{key}", np.nan) for row in history], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, Path(path))


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path) -> None:
    """The ROC curve with its area, as a PNG."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.legend(loc="lower right")
    _save(figure, Path(path))


def plot_confusion(confusion: list[list[int]], labels: tuple[str, str], path: str | Path) -> None:
    """The 2 x 2 confusion matrix (rows: truth, columns: prediction), as a PNG."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4, 3.6))
    matrix = np.asarray(confusion)
    axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axis.set_xticks([0, 1], [f"called {name}" for name in labels])
    axis.set_yticks([0, 1], list(labels))
    _save(figure, Path(path))


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: str | Path,
                     bins: int = 10) -> None:
    """The reliability diagram: observed positive rate against mean predicted probability in
    ``bins`` equal-width bins (point size: images in the bin), with the diagonal, as a PNG."""
    plt = _pyplot()
    predicted, observed, counts = reliability_bins(labels, probabilities, bins)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.plot(predicted, observed, color="tab:blue")
    axis.scatter(predicted, observed, s=20 + 200 * counts / counts.max(), color="tab:blue")
    axis.set_xlabel("mean predicted probability")
    axis.set_ylabel("observed fraction positive")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    _save(figure, Path(path))
