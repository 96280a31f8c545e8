"""A run folder's per-epoch checkpoints and resuming a killed run from them.

``checkpoints/`` holds ``epoch-NNNN.keras`` for the last two epochs, ``state.json`` (the
history up to the newest one) and, for ``keep_best`` runs, ``best.keras``. Every file is
written atomically and ``state.json`` last, so a kill at any moment leaves a state that names
only complete checkpoints; a newest checkpoint damaged anyway falls back to the one before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras

from pneumocnn.core.durable_files import remove_temporaries, write_text
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.training.export import save_keras
from pneumocnn.training.settings import TrainingConfig, saved_config

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2


class Checkpoints:
    """``epoch-NNNN.keras`` files plus ``state.json`` (the history up to the newest one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, model: keras.Model, history: list[dict], best: bool = False) -> None:
        """Checkpoint the epoch that ends ``history``; with ``best``, also as ``best.keras``
        (written before ``state.json``, so the state never names an epoch not saved)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        save_keras(model, ModelDescription(), self._path(len(history)))
        if best:
            save_keras(model, ModelDescription(), self.best)
        write_text(self.folder / "state.json", json.dumps({"history": history}, indent=1))
        for old in sorted(self.folder.glob("epoch-*.keras"))[:-CHECKPOINTS_KEPT]:
            old.unlink()

    def restore(self) -> tuple[keras.Model | None, list[dict]]:
        """The newest checkpoint that loads, with the history up to it; ``(None, [])`` if none."""
        state = self.folder / "state.json"
        if not state.exists():
            return None, []
        history = json.loads(state.read_text())["history"]
        for epochs in range(len(history), max(len(history) - CHECKPOINTS_KEPT, 0), -1):
            try:
                model = keras.saving.load_model(self._path(epochs))
            except Exception as error:  # a damaged archive fails in zip, h5 or Keras code
                log.warning("checkpoint %s unusable (%s); trying the one before",
                            self._path(epochs), error)
                continue
            log.info("resuming after epoch %d", epochs)
            return model, history[:epochs]
        log.warning("no usable checkpoint in %s; starting over", self.folder)
        return None, []

    @property
    def best(self) -> Path:
        """The checkpoint of the epoch with the lowest validation loss (``keep_best`` runs)."""
        return self.folder / "best.keras"

    def _path(self, epochs: int) -> Path:
        return self.folder / f"epoch-{epochs:04d}.keras"


def open_run(run_dir: Path, config: TrainingConfig, resume: bool,
             settings_given: bool) -> TrainingConfig:
    """The settings to train ``run_dir`` with: ``config`` for a new run; for a folder that
    holds a run, the settings saved there (only with ``resume``, else ``DatasetError``).
    Clears the temporaries a killed run left (the caller holds the folder's lock)."""
    saved = run_dir / "config.json"
    if saved.exists():
        if not resume:
            raise DatasetError(
                f"{run_dir}: already holds a run; pass resume=True (--resume) to continue it "
                "or choose another folder"
            )
        stored = saved_config(run_dir)
        if settings_given and stored != config:
            log.warning("resuming %s with its saved settings, not the ones given", run_dir)
        config = stored
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "cache"):
        remove_temporaries(folder)
    return config
