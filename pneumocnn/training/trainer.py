"""``train``: fit a CNN on a labelled X-ray folder, checkpoint every epoch, export model files.

A run folder holds ``config.json``, ``checkpoints/`` (the last two epochs plus ``state.json``),
and when training ends ``model.keras``, ``model-{float32,float16,dynamic-int8,int8}.tflite``,
``history.csv``, ``curves.png``, ``metrics.json`` and ``report.md``. Every file is written
atomically, so a kill at any moment leaves each file either complete or absent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumocnn import __version__
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.files import exclusive_lock, remove_temporaries, write_text
from pneumocnn.core.folders import LabelledImages, find_splits, patient_folds, split_by_patient
from pneumocnn.core.metrics import binary_metrics, fit_calibration, threshold_for_sensitivity
from pneumocnn.core.modelfile import ModelDescription, positive_probability
from pneumocnn.core.preprocessing import Preprocessing, to_model_inputs

log = logging.getLogger("pneumocnn")

CHECKPOINTS_KEPT = 2


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a run; saved as ``config.json`` and reused by ``resume``. The defaults
    are the bundled model's recipe, chosen by the accuracy study (``benchmarks/study.py``)."""

    architecture: str = "small-bn"
    output: str | None = None  # "sigmoid" or "softmax"; None: the architecture's own
    loss: str | None = None  # "binary_crossentropy", "categorical_crossentropy"; None: as above
    optimizer: str | None = None  # a Keras optimizer name ("adam", "rmsprop"); None: as above
    epochs: int = 15
    batch_size: int = 16
    learning_rate: float | None = None
    schedule: str = "cosine"  # learning rate: "constant", or "cosine" decay to 0 over the run
    input_size: int = 150
    channels: int = 3
    normalize: str = "equalize"  # intensity normalisation, see pneumocnn.core.preprocessing.Preprocessing
    augment: bool = True
    augmentation: str = "shift-zoom"  # a name in pneumocnn.training.augmentations.AUGMENTATIONS
    class_weight: str | None = None  # None or "balanced"
    validation: str = "patients"  # "patients": split train by patient; "folder": ROOT/val
    validation_fraction: float = 0.1
    fold: int | None = None  # with validation="patients": validate on this patient fold ...
    folds: int = 5  # ... of this many (see pneumocnn.core.folders.patient_folds)
    early_stopping: int | None = None  # patience in epochs on validation loss
    keep_best: bool = False  # export the epoch of lowest validation loss, not the last one
    # re-estimate batch-norm statistics on un-augmented training images before export
    recalibrate_batchnorm: bool = True
    seed: int = 0
    threshold: float | str = "sensitivity"  # a probability, or "sensitivity" for the target below
    target_sensitivity: float = 0.97
    calibrate: bool = True
    representative_images: int = 300

    def preprocessing(self) -> Preprocessing:
        """The preprocessing every model file of this run declares."""
        return Preprocessing(height=self.input_size, width=self.input_size, channels=self.channels,
                             normalize=self.normalize)

    def compile_settings(self, architecture) -> tuple[int, str, str]:
        """``(outputs, loss, optimizer)``: the architecture's own unless overridden here."""
        outputs = {None: architecture.outputs, "sigmoid": 1, "softmax": 2}.get(self.output)
        if outputs is None:
            raise ValueError(f"output must be 'sigmoid' or 'softmax', got {self.output!r}")
        return (outputs, self.loss or architecture.loss, self.optimizer or architecture.optimizer)


# The seed report's recipes, reproduced (see README, "Training"): every setting they fix.
_SEED_RECIPE = {
    "architecture": "seed-to-be", "output": None, "loss": None, "optimizer": None,
    "epochs": 50, "batch_size": 16, "learning_rate": None, "schedule": "constant",
    "input_size": 150, "channels": 3,
    "normalize": "none", "augment": True, "augmentation": "seed", "class_weight": None,
    "early_stopping": None, "keep_best": False, "recalibrate_batchnorm": False,
    "threshold": 0.5, "target_sensitivity": 0.95,
}
RECIPES: dict[str, dict] = {
    "pneumocnn": {},  # TrainingConfig's defaults: the bundled model's recipe
    "seed": _SEED_RECIPE,
    "seed-as-is": {**_SEED_RECIPE, "architecture": "seed-as-is"},
}


def make_config(recipe: str = "pneumocnn", **settings) -> TrainingConfig:
    """The settings of a run: the named recipe (see ``RECIPES``), then ``settings`` over it."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    return TrainingConfig(**{**RECIPES[recipe], **settings})


def saved_config(run_dir: str | os.PathLike) -> TrainingConfig:
    """The settings saved in a run folder's ``config.json``. Settings added to pneumocnn after
    the run was made take the seed recipe's value, which is how such runs were trained."""
    return make_config("seed", **json.loads((Path(run_dir) / "config.json").read_text()))


@dataclass
class TrainingResult:
    """What a finished run produced: file paths, validation metrics and per-epoch history."""

    run_dir: Path
    keras_model: Path
    tflite_models: dict[str, Path]
    metrics: dict
    history: list[dict] = field(default_factory=list)


def train(
    data: str | os.PathLike,
    out: str | os.PathLike = "runs/pneumocnn",
    *,
    recipe: str = "pneumocnn",
    resume: bool = False,
    verbose: int | str = "auto",
    **settings,
) -> TrainingResult:
    """Train on ``data`` (``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}`` or ``ROOT/{NORMAL,
    PNEUMONIA}``) into the run folder ``out`` and return a :class:`TrainingResult`.

    ``recipe`` picks the starting settings: ``"pneumocnn"`` (the defaults of
    :class:`TrainingConfig`, the bundled model's recipe), ``"seed"`` (the seed report's TO-BE
    CNN: 50 epochs, shear/zoom/flip augmentation, last epoch, threshold 0.5) or
    ``"seed-as-is"``. ``settings`` are fields of :class:`TrainingConfig` and override the
    recipe. ``resume=True`` continues an interrupted run in ``out`` from its last complete
    checkpoint, with the settings saved there. ``verbose`` is Keras's: ``"auto"``/1 a progress
    bar, 2 one line per epoch, 0 silent.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_dir = Path(out)
    config = make_config(recipe, **settings)
    with exclusive_lock(run_dir / ".lock", f"run folder {run_dir}"):
        return _train(Path(data), run_dir, config, resume, verbose,
                      settings_given=bool(settings) or recipe != "pneumocnn")


def _train(data: Path, run_dir: Path, config: TrainingConfig, resume: bool, verbose,
           settings_given: bool) -> TrainingResult:
    import keras

    from pneumocnn.core.plots import plot_reliability
    from pneumocnn.training import export
    from pneumocnn.training.architectures import get_architecture, make_optimizer
    from pneumocnn.training.augmentations import AUGMENTATIONS
    from pneumocnn.training.data import decode_all, make_dataset

    config = _start_run(run_dir, config, resume, settings_given)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "cache"):
        remove_temporaries(folder)  # left by a killed run; this run holds the folder's lock
    spec = config.preprocessing()
    architecture = get_architecture(config.architecture)
    if config.augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {sorted(AUGMENTATIONS)}, "
                         f"got {config.augmentation!r}")
    train_images, val_images = split(data, config)
    if not (run_dir / "config.json").exists():
        write_text(run_dir / "config.json", json.dumps(asdict(config), indent=1))
    log.info("train: %s; validation: %s", _summary(train_images), _summary(val_images))
    train_data = decode_all(train_images, spec, run_dir / "cache")
    val_data = decode_all(val_images, spec, run_dir / "cache")
    outputs, loss, optimizer = config.compile_settings(architecture)
    one_hot = outputs == 2
    val_dataset = make_dataset(val_data, spec, config.batch_size, one_hot=one_hot)

    keras.utils.set_random_seed(config.seed)  # also seeds tf.data's shuffle: set on resume too
    checkpoints = _Checkpoints(run_dir / "checkpoints")
    model, history = checkpoints.restore(keras)
    if model is None:
        model = architecture.build(spec.input_shape, outputs)
        model.compile(
            optimizer=make_optimizer(optimizer, config.learning_rate,
                                     _decay_steps(config, train_data)),
            loss=loss,
            metrics=["accuracy"],
        )
    class_weight = _class_weight(train_data.labels) if config.class_weight == "balanced" else None

    for epoch in range(len(history), config.epochs):
        if _should_stop(history, config.early_stopping):
            log.info("early stopping after epoch %d", len(history))
            break
        _reseed_dropout(model, config.seed, epoch)
        started = time.monotonic()
        fit = model.fit(
            make_dataset(train_data, spec, config.batch_size, one_hot=one_hot, shuffle=True,
                         augmentation=AUGMENTATIONS[config.augmentation] if config.augment else None,
                         seed=config.seed, epoch=epoch),
            validation_data=val_dataset,
            initial_epoch=epoch,
            epochs=epoch + 1,
            class_weight=class_weight,
            shuffle=False,  # the dataset is already shuffled, by (seed, epoch)
            verbose=verbose,
        )
        row = {"epoch": epoch + 1, **{k: float(v[-1]) for k, v in fit.history.items()},
               "seconds": round(time.monotonic() - started, 2)}
        history.append(row)
        checkpoints.save(model, history,
                         best=config.keep_best and _best_row(history) is row)

    if config.keep_best and history:
        model = keras.saving.load_model(checkpoints.best)
        log.info("exporting epoch %d, the lowest validation loss", _best_row(history)["epoch"])
    if config.recalibrate_batchnorm:
        _recalibrate_batchnorm(model, train_data.pixels, spec, config.batch_size, config.seed)

    probabilities = positive_probability(model.predict(val_dataset, verbose=0))
    description, metrics = _describe(config, spec, architecture.name, val_data.labels,
                                     probabilities, train_data, val_data, history)
    keras_path = run_dir / "model.keras"
    export.save_keras(model, description, keras_path)
    rng = np.random.default_rng(config.seed)
    chosen = rng.choice(len(train_data.labels),
                        min(config.representative_images, len(train_data.labels)), replace=False)
    representative = to_model_inputs(train_data.pixels[np.sort(chosen)], spec)
    tflite_paths = export.export_tflite(model, description, run_dir, representative)
    metrics["tflite"] = _score_tflite(tflite_paths, val_data)
    _write_reports(run_dir, config, description, metrics, history, val_images, train_images)
    plot_reliability(val_data.labels, description.calibrate(probabilities),
                     run_dir / "reliability.png")
    return TrainingResult(run_dir, keras_path, tflite_paths, metrics, history)


def _start_run(run_dir: Path, config: TrainingConfig, resume: bool,
               settings_given: bool) -> TrainingConfig:
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
        return stored
    return config


def split(root: str | os.PathLike, config: TrainingConfig) -> tuple[LabelledImages, LabelledImages]:
    """The ``(train, validation)`` images a run with ``config`` uses from the folder ``root``."""
    splits = find_splits(root)
    if config.validation == "patients" and config.fold is not None:
        if not 0 <= config.fold < config.folds:
            raise ValueError(f"fold must lie in [0, {config.folds}), got {config.fold}")
        in_fold = patient_folds(splits["train"], config.folds, config.seed) == config.fold
        return (splits["train"].subset(np.flatnonzero(~in_fold)),
                splits["train"].subset(np.flatnonzero(in_fold)))
    if config.validation == "patients":
        return split_by_patient(splits["train"], config.validation_fraction, config.seed)
    if config.validation == "folder":
        if "val" not in splits:
            raise DatasetError(f"{root}: no val folder; use validation='patients'")
        return splits["train"], splits["val"]
    raise ValueError(f"validation must be 'patients' or 'folder', got {config.validation!r}")


def _summary(images: LabelledImages) -> str:
    counts = ", ".join(f"{n} {name}" for name, n in images.counts().items())
    return f"{len(images)} images ({counts}) from {len(set(images.patients()))} patients"


class _Checkpoints:
    """``epoch-NNNN.keras`` files plus ``state.json`` (the history up to the newest one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, model, history: list[dict], best: bool = False) -> None:
        """Checkpoint the epoch that ends ``history``; with ``best``, also as ``best.keras``
        (written before ``state.json``, so the state never names an epoch not saved)."""
        from pneumocnn.training.export import save_keras

        self.folder.mkdir(parents=True, exist_ok=True)
        save_keras(model, ModelDescription(), self._path(len(history)))
        if best:
            save_keras(model, ModelDescription(), self.best)
        write_text(self.folder / "state.json", json.dumps({"history": history}, indent=1))
        for old in sorted(self.folder.glob("epoch-*.keras"))[:-CHECKPOINTS_KEPT]:
            old.unlink()

    def restore(self, keras) -> tuple[object | None, list[dict]]:
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


def _reseed_dropout(model, seed: int, epoch: int) -> None:
    """Set every random layer's generator from ``(seed, epoch)``: Keras does not save this
    state in checkpoints, and a resumed epoch must draw the same dropout masks."""
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for index, state in enumerate(states):
        state.assign(np.array([seed * 1000 + index, epoch * 1_000_003], dtype=state.dtype))


def _recalibrate_batchnorm(model, pixels: np.ndarray, spec: Preprocessing, batch_size: int,
                           seed: int) -> None:
    """Replace each batch-norm layer's moving mean and variance by their averages over one pass
    of the training images without augmentation. Training leaves statistics of augmented
    batches, weighted towards the last steps, which shift the logits of clean images."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    momentum = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(pixels))
    for k, start in enumerate(range(0, len(order), batch_size)):
        for layer in layers:
            layer.momentum = k / (k + 1)  # moving value = the mean over the batches so far
        model(to_model_inputs(pixels[order[start:start + batch_size]], spec), training=True)
    for layer, value in zip(layers, momentum, strict=True):
        layer.momentum = value


def _decay_steps(config: TrainingConfig, train_data) -> int | None:
    """Optimizer steps in the whole run, for a cosine schedule; ``None`` for a constant rate."""
    if config.schedule == "constant":
        return None
    if config.schedule != "cosine":
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {config.schedule!r}")
    return config.epochs * -(-len(train_data.labels) // config.batch_size)


def _best_row(history: list[dict]) -> dict:
    """The first epoch with the lowest validation loss."""
    return min(history, key=lambda row: row["val_loss"])


def _should_stop(history: list[dict], patience: int | None) -> bool:
    if not patience or len(history) <= patience:
        return False
    losses = [row["val_loss"] for row in history]
    return min(losses[-patience:]) >= min(losses[:-patience])


def _class_weight(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=2)
    return {k: float(len(labels) / (2 * counts[k])) for k in (0, 1)}


def _describe(config, spec, architecture, labels, raw, train_data, val_data, history):
    temperature, bias = fit_calibration(labels, raw) if config.calibrate else (1.0, 0.0)
    description = ModelDescription(preprocessing=spec, temperature=temperature, bias=bias)
    calibrated = description.calibrate(raw)
    sensitivity_threshold = threshold_for_sensitivity(labels, calibrated, config.target_sensitivity)
    if config.threshold == "sensitivity":
        threshold, source = sensitivity_threshold, (
            f"validation sensitivity >= {config.target_sensitivity}")
    else:
        threshold, source = float(config.threshold), "fixed"
    metrics = {
        "validation": binary_metrics(labels, calibrated, threshold),
        "validation_at_sensitivity_threshold": binary_metrics(
            labels, calibrated, sensitivity_threshold),
        "validation_uncalibrated_ece": binary_metrics(labels, raw, threshold)["ece"],
    }
    import keras
    import tensorflow as tf

    description = ModelDescription(
        preprocessing=spec,
        threshold=threshold,
        temperature=temperature,
        bias=bias,
        info={
            "architecture": architecture,
            "threshold_source": source,
            "thresholds": {"fixed_0.5": 0.5,
                           f"sensitivity_{config.target_sensitivity}": sensitivity_threshold},
            "provenance": {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "train_images": train_data.labels.size,
                "train_counts": np.bincount(train_data.labels, minlength=2).tolist(),
                "validation_images": val_data.labels.size,
                "validation_counts": np.bincount(val_data.labels, minlength=2).tolist(),
                "epochs": len(history),
                "exported_epoch": _best_row(history)["epoch"] if config.keep_best and history
                else len(history),
                "config": asdict(config),
                "versions": {"pneumocnn": __version__, "tensorflow": tf.__version__,
                             "keras": keras.__version__, "numpy": np.__version__,
                             "python": platform.python_version()},
            },
            "validation_metrics": metrics["validation"],
        },
    )
    return description, metrics


def _score_tflite(paths: dict[str, Path], val_data) -> dict:
    from pneumocnn.runtime.model import load

    scores = {}
    for quantization, path in paths.items():
        model = load(path)
        probabilities = model.probabilities(val_data.pixels)  # already decoded and normalised
        scores[quantization] = binary_metrics(val_data.labels, probabilities, model.threshold)
    return scores


def _write_reports(run_dir, config, description, metrics, history, val_images, train_images):
    from pneumocnn.core.plots import plot_history

    columns = list(history[0]) if history else ["epoch"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / "history.csv", buffer.getvalue())
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    if history:
        plot_history(history, run_dir / "curves.png")
    write_text(run_dir / "report.md", _report_text(config, description, metrics, history,
                                                    val_images, train_images))


def _report_text(config, description, metrics, history, val_images, train_images) -> str:
    val = metrics["validation"]
    seconds = [row["seconds"] for row in history]
    lines = [
        f"# Training report: {description.info['architecture']}",
        "",
        f"- train: {_summary(train_images)}",
        f"- validation ({config.validation}, fraction {config.validation_fraction}, "
        f"seed {config.seed}): {_summary(val_images)}",
        f"- epochs: {len(history)}; median seconds per epoch: "
        f"{np.median(seconds) if seconds else float('nan'):.1f}",
        f"- exported epoch: {description.info['provenance']['exported_epoch']}"
        + (" (lowest validation loss)" if config.keep_best else " (the last)")
        + ("; batch-norm statistics re-estimated on the training images without augmentation"
           if config.recalibrate_batchnorm else ""),
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
