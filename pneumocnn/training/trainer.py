"""``train``: fit a CNN on a labelled X-ray folder, checkpoint every epoch, export model files.

Across several workers (``TF_CONFIG``, see :mod:`.multi_worker`) every worker trains and only
the chief writes the run folder. A run folder holds ``config.json``, ``checkpoints/`` (see
:mod:`.checkpoints`), ``cache/`` (decoded images), and when training ends ``model.keras``,
``model-{float32,float16,dynamic-int8,int8}.tflite`` and the reports of :mod:`.report`. Every
file is written atomically, so a kill at any moment leaves each file either complete or absent.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from pneumocnn.core.durable_files import write_text
from pneumocnn.core.labelled_data import LabelledImages
from pneumocnn.core.modelfile import ModelDescription, positive_probability
from pneumocnn.core.preprocessing import to_model_inputs
from pneumocnn.training import export
from pneumocnn.training.architectures import compiled_model, get_architecture
from pneumocnn.training.augmentations import AUGMENTATIONS
from pneumocnn.training.averaging import KeepTrainingWeights, take_average
from pneumocnn.training.calibration import TrainedRun, describe_model, recalibrate_batchnorm
from pneumocnn.training.checkpoints import Checkpoints, open_run
from pneumocnn.training.data import DecodedImages, decode_all, make_dataset
from pneumocnn.training.distillation import load_teachers, record_teachers, with_teacher_targets
from pneumocnn.training.multi_worker import Cluster, check_batch, make_cluster
from pneumocnn.training.report import score_tflite, write_reports
from pneumocnn.training.settings import RECIPES, TrainingConfig, make_config, saved_config
from pneumocnn.training.splits import split, summary

# The settings and the split have their own modules; they are still importable from here.
__all__ = ["RECIPES", "TrainingConfig", "TrainingResult", "make_config", "saved_config", "split",
           "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a finished run produced: file paths, validation metrics and per-epoch history."""

    run_dir: Path
    keras_model: Path
    tflite_models: dict[str, Path]
    metrics: dict
    history: list[dict] = field(default_factory=list)
    chief: bool = True  # False on the other workers of a multi-worker run: they write nothing


def train(
    data: str | os.PathLike,
    out: str | os.PathLike = "runs/pneumocnn",
    *,
    recipe: str = "pneumocnn",
    resume: bool = False,
    verbose: int | str = "auto",
    strategy: str = "auto",
    **settings: object,
) -> TrainingResult:
    """Train on ``data`` (``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}`` or ``ROOT/{NORMAL,
    PNEUMONIA}``) into the run folder ``out`` and return a :class:`TrainingResult`.

    ``recipe`` picks the starting settings: ``"pneumocnn"`` (the defaults of
    :class:`TrainingConfig`, the bundled model's recipe), ``"seed"`` (the seed report's TO-BE
    CNN: 50 epochs, shear/zoom/flip augmentation, last epoch, threshold 0.5) or
    ``"seed-as-is"``. ``settings`` are fields of :class:`TrainingConfig` and override the
    recipe (``random_seed`` is the random seed). ``resume=True`` continues an interrupted run
    in ``out`` from its last complete checkpoint, with the settings saved there. ``verbose``
    is Keras's: ``"auto"``/1 a progress bar, 2 one line per epoch, 0 silent. ``strategy``
    (``"auto"``, ``"mirrored"``, ``"none"``) says where to train, see
    :mod:`pneumocnn.training.multi_worker`; ``batch_size`` is the global batch.
    """
    run_dir = Path(out)
    config = make_config(recipe, **settings)
    cluster = make_cluster(strategy)
    given = bool(settings) or recipe != "pneumocnn"
    with cluster.run_lock(run_dir):
        return _train(Path(data), run_dir, config, resume, verbose, given, cluster)


def _train(data: Path, run_dir: Path, config: TrainingConfig, resume: bool, verbose: int | str,
           settings_given: bool, cluster: Cluster) -> TrainingResult:
    if cluster.chief:
        config = open_run(run_dir, config, resume, settings_given)
    elif resume and (run_dir / "config.json").exists():
        config = saved_config(run_dir)  # a shared run folder: read, never written
    _check(config, cluster)
    check_batch(cluster, config.batch_size)
    teachers = load_teachers(config.teachers, config.preprocessing())
    images = split(data, config)
    if cluster.chief:
        _save_config(run_dir, config)
    teacher_digests = record_teachers(run_dir, config.teachers) if teachers else {}
    train_data, val_data = _decode(cluster.cache_dir(run_dir), config, images)
    model, history = _fit(run_dir, config, train_data, val_data, verbose, cluster, teachers)
    if cluster.chief:
        result = _finish(run_dir, config, model, history, train_data, val_data, images, cluster,
                         teacher_digests)
    else:
        log.info("worker %d of %d: trained; the chief writes %s", cluster.worker_index,
                 cluster.workers, run_dir)
        result = TrainingResult(run_dir, run_dir / "model.keras", {}, {}, history, chief=False)
    cluster.barrier()  # a worker returns once the chief has written the run folder
    return result


def _finish(run_dir: Path, config: TrainingConfig, model: keras.Model, history: list[dict],
            train_data: DecodedImages, val_data: DecodedImages,
            images: tuple[LabelledImages, LabelledImages], cluster: Cluster,
            teacher_digests: dict[str, str]) -> TrainingResult:
    """On the chief: choose the weights to export (the last, their moving average, or the best
    epoch's), describe, export and report the model (``teacher_digests``: the SHA-256 of each
    teacher, recorded in its provenance)."""
    if config.ema_momentum is not None:
        take_average(model)
    if cluster.distributed:  # export from a copy of the weights outside the strategy
        local = compiled_model(config, len(train_data.labels))
        local.set_weights(model.get_weights())
        model = local
    model, exported_epoch = _final_model(run_dir, config, model, history, train_data)
    run = TrainedRun(config, train_data.labels, val_data.labels,
                     _validation_probabilities(model, config, val_data), history, exported_epoch,
                     teacher_digests)
    description, metrics = describe_model(run, cluster.distribution(config.batch_size))
    keras_path, tflite_paths = _export(run_dir, config, model, description, train_data)
    metrics["tflite"] = score_tflite(tflite_paths, val_data)
    write_reports(run_dir, run, description, metrics, images)
    return TrainingResult(run_dir, keras_path, tflite_paths, metrics, history)


def _check(config: TrainingConfig, cluster: Cluster) -> None:
    """Fail on a setting that no run can use, before the run writes anything."""
    config.check()
    get_architecture(config.architecture)
    if config.teachers and cluster.distributed:
        raise ValueError(f"distillation (teachers) trains without a distribution strategy, "
                         f"not {cluster.name!r}: use strategy='none'")


def _save_config(run_dir: Path, config: TrainingConfig) -> None:
    """Write ``config.json`` for a new run (a resumed run keeps the one it has)."""
    if not (run_dir / "config.json").exists():
        write_text(run_dir / "config.json", json.dumps(asdict(config), indent=1))


def _decode(cache: Path, config: TrainingConfig,
            images: tuple[LabelledImages, LabelledImages]) -> tuple[DecodedImages, DecodedImages]:
    """The ``(train, validation)`` images decoded, once, into ``cache``."""
    train_images, val_images = images
    log.info("train: %s; validation: %s", summary(train_images), summary(val_images))
    spec = config.preprocessing()
    return decode_all(train_images, spec, cache), decode_all(val_images, spec, cache)


def _fit(run_dir: Path, config: TrainingConfig, train_data: DecodedImages,
         val_data: DecodedImages, verbose: int | str, cluster: Cluster,
         teachers: list[keras.Model]) -> tuple[keras.Model, list[dict]]:
    """Train epoch by epoch from the last checkpoint (or a fresh model), the chief
    checkpointing each one, on the labels or, given ``teachers``, on their mean probability;
    return the model after the last epoch and the history of every epoch."""
    keras.utils.set_random_seed(config.random_seed)  # also seeds tf.data's shuffle: on resume too
    checkpoints = Checkpoints(run_dir / "checkpoints")
    with cluster.strategy.scope():
        model, history = checkpoints.restore()
        if model is None:
            model = compiled_model(config, len(train_data.labels))
    history = cluster.start_from_chief(model, history)
    start = len(history)
    spec = config.preprocessing()
    one_hot = _one_hot(model)
    val_dataset = make_dataset(val_data, spec, config.batch_size, one_hot=one_hot)
    augmentation = AUGMENTATIONS[config.augmentation] if config.augment else None
    class_weight = _class_weight(train_data.labels) if config.class_weight == "balanced" else None
    callbacks = [KeepTrainingWeights()] if config.ema_momentum is not None else []
    for epoch in range(start, config.epochs):
        if cluster.chief_decides(lambda: _should_stop(history, config.early_stopping)):
            log.info("early stopping after epoch %d", epoch)
            break
        _reseed_dropout(model, config.random_seed, epoch)
        started = time.monotonic()
        train_dataset = make_dataset(train_data, spec, config.batch_size, one_hot=one_hot,
                                     shuffle=True, augmentation=augmentation,
                                     seed=config.random_seed, epoch=epoch)
        if teachers:
            train_dataset = with_teacher_targets(train_dataset, teachers, one_hot)
        logged = cluster.train_epoch(model, train_dataset, val_dataset, epoch=epoch,
                                     epochs=config.epochs, class_weight=class_weight,
                                     verbose=verbose, callbacks=callbacks)
        if config.soft_targets:  # accuracy against them means nothing (the loss does)
            logged.pop("accuracy", None)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logged.items()},
               "seconds": round(time.monotonic() - started, 2)}
        history.append(row)
        if cluster.chief:
            checkpoints.save(model, history, best=config.keep_best and _best_row(history) is row)
    return model, history


def _final_model(run_dir: Path, config: TrainingConfig, model: keras.Model, history: list[dict],
                 train_data: DecodedImages) -> tuple[keras.Model, int]:
    """The model to export and its epoch: the last one, or with ``keep_best`` the one of lowest
    validation loss; batch-norm statistics re-estimated with ``recalibrate_batchnorm``."""
    exported_epoch = len(history)
    if config.keep_best and history:
        model = keras.saving.load_model(Checkpoints(run_dir / "checkpoints").best)
        exported_epoch = _best_row(history)["epoch"]
        log.info("exporting epoch %d, the lowest validation loss", exported_epoch)
    if config.recalibrate_batchnorm:
        recalibrate_batchnorm(model, train_data.pixels, config.preprocessing(), config.batch_size,
                              config.random_seed)
    return model, exported_epoch


def _validation_probabilities(model: keras.Model, config: TrainingConfig,
                              val_data: DecodedImages) -> np.ndarray:
    """The model's positive-class probability for each validation image, uncalibrated."""
    dataset = make_dataset(val_data, config.preprocessing(), config.batch_size,
                           one_hot=_one_hot(model))
    return positive_probability(model.predict(dataset, verbose=0))


def _export(run_dir: Path, config: TrainingConfig, model: keras.Model,
            description: ModelDescription, train_data: DecodedImages) -> tuple[Path, dict[str, Path]]:
    """Write ``model.keras`` and the ``.tflite`` files, int8 calibrated on
    ``representative_images`` training images drawn with the run's random seed."""
    keras_path = run_dir / "model.keras"
    export.save_keras(model, description, keras_path)
    count = len(train_data.labels)
    chosen = np.random.default_rng(config.random_seed).choice(
        count, min(config.representative_images, count), replace=False)
    representative = to_model_inputs(train_data.pixels[np.sort(chosen)], config.preprocessing())
    return keras_path, export.export_tflite(model, description, run_dir, representative)


def _one_hot(model: keras.Model) -> bool:
    """Whether ``model`` has a two-class softmax head (targets one-hot), not one sigmoid unit."""
    return model.output_shape[-1] == 2


def _reseed_dropout(model: keras.Model, random_seed: int, epoch: int) -> None:
    """Set every random layer's generator from ``(random_seed, epoch)``: Keras does not save
    this state in checkpoints, and a resumed epoch must draw the same dropout masks."""
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for index, state in enumerate(states):
        state.assign(np.array([random_seed * 1000 + index, epoch * 1_000_003], dtype=state.dtype))


def _best_row(history: list[dict]) -> dict:
    """The first epoch with the lowest validation loss."""
    return min(history, key=lambda row: row["val_loss"])


def _should_stop(history: list[dict], patience: int | None) -> bool:
    """Early stopping: no lower validation loss in the last ``patience`` epochs."""
    if not patience or len(history) <= patience:
        return False
    losses = [row["val_loss"] for row in history]
    return min(losses[-patience:]) >= min(losses[:-patience])


def _class_weight(labels: np.ndarray) -> dict[int, float]:
    """Balanced class weights: ``n / (2 n_class)``."""
    counts = np.bincount(labels, minlength=2)
    return {k: float(len(labels) / (2 * counts[k])) for k in (0, 1)}
