"""Training across workers and devices with ``tf.distribute``.

``strategy="auto"`` (the default) trains under ``MultiWorkerMirroredStrategy`` when the
standard ``TF_CONFIG`` environment variable names a cluster of more than one task (every
worker runs the same ``pneumocnn train`` command), under ``MirroredStrategy`` when several GPUs
are visible, and in one process otherwise; ``"mirrored"`` asks for ``MirroredStrategy`` and
``"none"`` for one process.

The batch size of a run is the **global** batch: each step trains on ``batch_size`` images
split evenly over the replicas (``batch_size / replicas`` each), so a run gives the same
steps, learning-rate schedule and augmentation on one worker or several. Batch-norm layers
normalise with the statistics of each replica's share of a batch, the one difference a
multi-replica run makes (the statistics exported are re-estimated over the training images
anyway, see ``recalibrate_batchnorm``).

Keras 3's ``Model.fit`` does not run under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so a multi-worker run trains with :func:`fit_epoch`, the same
epoch as ``fit`` (loss, class weights, accuracy, validation) written with ``strategy.run``.

:class:`Cluster` is the trainer's one seam to all this: the same calls (``train_epoch``,
``barrier``, ``chief_decides``, ...) on one worker, where they are trivial, and on several.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumocnn.core.durable_files import exclusive_lock
from pneumocnn.training.settings import STRATEGIES_ABOUT

log = logging.getLogger(__name__)

STRATEGIES = tuple(STRATEGIES_ABOUT)


@dataclass(frozen=True)
class Cluster:
    """Where a run trains: the strategy, how many workers and replicas, and whether this
    process is the chief (the one worker that writes the run folder)."""

    strategy: tf.distribute.Strategy
    name: str  # "none", "mirrored" or "multi-worker"
    workers: int = 1
    worker_index: int = 0
    chief: bool = True

    @property
    def replicas(self) -> int:
        """Replicas in sync: the global batch is split over this many."""
        return self.strategy.num_replicas_in_sync

    @property
    def multi_worker(self) -> bool:
        """True when other processes train with this one."""
        return self.workers > 1

    @property
    def distributed(self) -> bool:
        """True under a distribution strategy (several workers or devices), not in one process."""
        return self.name != "none"

    def distribution(self, batch_size: int) -> dict:
        """The run's distribution, for its report and model description."""
        return {"strategy": self.name, "workers": self.workers, "replicas": self.replicas,
                "global_batch": batch_size, "per_replica_batch": batch_size // self.replicas}

    @contextlib.contextmanager
    def run_lock(self, run_dir: Path) -> Iterator[None]:
        """Hold the run folder's lock on the chief, the one worker that writes it."""
        if not self.chief:
            yield
            return
        with exclusive_lock(run_dir / ".lock", f"run folder {run_dir}"):
            yield

    def cache_dir(self, run_dir: Path) -> Path:
        """Where this worker caches decoded images: the chief in the run folder, every other
        worker in a temporary folder of its own."""
        if self.chief:
            return run_dir / "cache"
        run = hashlib.sha256(os.fsencode(run_dir.resolve())).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"pneumocnn-worker-{self.worker_index}-{run}"

    def barrier(self) -> None:
        """Return once every worker has called it (at once in one process)."""
        if self.multi_worker:
            from_chief(self, [0.0])

    def chief_decides(self, decide: Callable[[], bool]) -> bool:
        """The chief's ``decide()`` on every worker (only the chief calls it)."""
        if not self.multi_worker:
            return decide()
        return bool(from_chief(self, [float(self.chief and decide())])[0])

    def start_from_chief(self, model: keras.Model, history: list[dict]) -> list[dict]:
        """The epochs to continue from, the chief's: every worker takes the chief's weights and
        optimizer state, and its count of epochs (the others' rows are blank). In one process,
        ``history`` itself."""
        if not self.multi_worker:
            return history
        take_chief_state(self, model)
        start = int(from_chief(self, [len(history)])[0])
        return history[:start] if self.chief else [{}] * start

    def train_epoch(self, model: keras.Model, train: tf.data.Dataset, validation: tf.data.Dataset,
                    *, epoch: int, epochs: int, class_weight: dict[int, float] | None,
                    verbose: int | str, callbacks: list[keras.callbacks.Callback]) -> dict:
        """Train epoch ``epoch`` (from 0) of ``epochs``, then validate: the row ``fit`` logs.
        Keras's ``fit`` in one process or on one worker's devices, :func:`fit_epoch` across
        workers (which logs the row itself)."""
        if self.multi_worker:
            logged = fit_epoch(self, model, train, validation, class_weight)
            log.info("epoch %d/%d: %s", epoch + 1, epochs,
                     ", ".join(f"{k} {v:.4f}" for k, v in logged.items()))
            return logged
        fit = model.fit(
            train,
            validation_data=validation,
            initial_epoch=epoch,
            epochs=epoch + 1,
            class_weight=class_weight,
            shuffle=False,  # the dataset is already shuffled, by (random seed, epoch)
            verbose=verbose,
            callbacks=callbacks,
        )
        return {k: v[-1] for k, v in fit.history.items()}


def make_cluster(strategy: str = "auto") -> Cluster:
    """The :class:`Cluster` this process trains in, from ``strategy`` and ``TF_CONFIG``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    task_index, workers, chief = _tf_config()
    if strategy == "auto" and workers > 1:
        return Cluster(tf.distribute.MultiWorkerMirroredStrategy(), "multi-worker", workers,
                       task_index, chief)
    if strategy == "mirrored" or (strategy == "auto" and
                                  len(tf.config.list_logical_devices("GPU")) > 1):
        return Cluster(tf.distribute.MirroredStrategy(), "mirrored")
    return Cluster(tf.distribute.get_strategy(), "none")


def _tf_config() -> tuple[int, int, bool]:
    """``(task index, tasks in the cluster's chief and worker jobs, whether this task is the
    chief)``: the task of type ``chief``, or worker 0 when the cluster has no chief job."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0, 1, True
    try:
        config = json.loads(text)
        jobs = config.get("cluster", {})
        task = config.get("task", {})
        workers = len(jobs.get("chief", [])) + len(jobs.get("worker", []))
        index = int(task.get("index", 0))
        chief = task.get("type") == "chief" or (
            task.get("type") == "worker" and index == 0 and not jobs.get("chief"))
        return index, max(workers, 1), chief
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not a valid cluster description: {error}") from error


def check_batch(cluster: Cluster, batch_size: int) -> None:
    """Refuse a global batch the replicas cannot share evenly."""
    if batch_size % cluster.replicas:
        raise ValueError(f"batch_size {batch_size} is the global batch and must be a multiple "
                         f"of the {cluster.replicas} replicas training it")


def distribute(cluster: Cluster, dataset: tf.data.Dataset) -> tf.distribute.DistributedDataset:
    """Each worker reads the whole pipeline (the same shuffles and augmentations, drawn per
    global batch) and keeps its replicas' share of every batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return cluster.strategy.experimental_distribute_dataset(dataset.with_options(options))


def from_chief(cluster: Cluster, values: list) -> list[np.ndarray]:
    """The chief's ``values`` (numbers or arrays) on every worker; the others pass values of
    the same shapes. Replica 0 lives on the chief."""
    tensors = [tf.cast(tf.convert_to_tensor(value), tf.float64) for value in values]

    def replica(*tensors):
        context = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float64)
        return context.all_reduce("sum", [tensor * first for tensor in tensors])

    reduced = cluster.strategy.run(replica, args=tuple(tensors))
    return [cluster.strategy.experimental_local_results(value)[0].numpy() for value in reduced]


def take_chief_state(cluster: Cluster, model: keras.Model) -> None:
    """Give every worker the chief's weights and optimizer state: the same start whether a
    worker built the model afresh or resumed it from a checkpoint it can read."""
    variables = list(model.variables) + list(model.optimizer.variables)
    values = from_chief(cluster, [variable.numpy() for variable in variables])
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value.astype(variable.dtype))


def fit_epoch(cluster: Cluster, model: keras.Model, train: tf.data.Dataset,
              validation: tf.data.Dataset, class_weight: dict[int, float] | None) -> dict:
    """One epoch of ``model`` (compiled, built in ``cluster``'s scope) over the global batches
    of ``train``, then a pass over ``validation``: the row ``fit`` would log (``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``), the same on every worker."""
    loss_function = keras.losses.get(model.loss)
    weights = tf.constant([class_weight[0], class_weight[1]] if class_weight else [1.0, 1.0])
    one_hot = model.output_shape[-1] == 2

    def sums(x, y, training: bool):
        """Sum over this replica's images of (weighted loss, correct calls, images)."""
        scores = model(x, training=training)
        labels = tf.argmax(y, axis=-1) if one_hot else tf.cast(y[:, 0] > 0.5, tf.int64)
        called = tf.argmax(scores, axis=-1) if one_hot else tf.cast(scores[:, 0] > 0.5, tf.int64)
        losses = loss_function(y, scores) * tf.gather(weights if training else tf.ones(2), labels)
        return (tf.reduce_sum(losses), tf.reduce_sum(tf.cast(called == labels, tf.float32)),
                tf.cast(tf.shape(x)[0], tf.float32))

    @tf.function
    def train_step(batch):
        def replica(x, y):
            context = tf.distribute.get_replica_context()
            count = context.all_reduce("sum", tf.cast(tf.shape(x)[0], tf.float32))
            with tf.GradientTape() as tape:
                loss, correct, images = sums(x, y, training=True)
                # the global batch's mean, as fit's loss; the optimizer sums the replicas'
                # gradients, so each replica's share of the regularisation is 1/replicas
                scaled = loss / count
                if model.losses:
                    scaled += tf.add_n(model.losses) / context.num_replicas_in_sync
            gradients = tape.gradient(scaled, model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return tf.stack([loss, correct, images])
        return cluster.strategy.reduce("sum", cluster.strategy.run(replica, args=batch), axis=None)

    @tf.function
    def test_step(batch):
        def replica(x, y):
            return tf.stack(sums(x, y, training=False))
        return cluster.strategy.reduce("sum", cluster.strategy.run(replica, args=batch), axis=None)

    trained = sum((train_step(batch) for batch in distribute(cluster, train)), tf.zeros(3))
    validated = sum((test_step(batch) for batch in distribute(cluster, validation)), tf.zeros(3))
    trained, validated = trained.numpy(), validated.numpy()
    return {"accuracy": trained[1] / trained[2], "loss": trained[0] / trained[2],
            "val_accuracy": validated[1] / validated[2], "val_loss": validated[0] / validated[2]}
