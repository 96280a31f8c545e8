"""Training input pipeline: images per second of one training epoch, three ways to feed it.

The same freshly built model (the run's architecture, built and compiled from its settings by
``pneumocnn.training.architectures.compiled_model``, the function ``pneumocnn.train`` compiles
with: output head, loss, optimizer, learning rate and schedule; same initial weights) is
trained for one epoch on the same images from:

- ``pneumocnn``: ``make_dataset`` over the decoded-pixel cache, with the seed's augmentation
  in the graph (what every epoch of ``pneumocnn.train`` runs);
- ``in-memory``: ready float32 model inputs sliced from memory, no augmentation (the floor:
  the model's own training cost);
- ``seed``: ``ImageDataGenerator(rescale, shear, zoom, flip).flow_from_directory`` (the seed's
  code; decodes and augments every image in Python every epoch; needs scipy).

Each model first trains on two batches untimed (tracing and graph building); then the three
take turns, one full epoch each, ``repeats`` times, and each figure is the median over its
epochs: wall seconds, and the process's CPU seconds (all its threads), which other programs on
a busy machine disturb much less. The one-off decode that fills pneumocnn's cache is
timed separately.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pneumocnn.core.labelled_data import LabelledImages
from pneumocnn.core.preprocessing import Preprocessing, to_model_inputs
from pneumocnn.training.settings import TrainingConfig

LABELS = {
    "pneumocnn": "pneumocnn make_dataset (cached pixels, augmentation in graph)",
    "in-memory": "in-memory float tensors, no augmentation (floor)",
    "seed": "seed ImageDataGenerator.flow_from_directory",
}


def _symlink_folder(images: LabelledImages, folder: Path) -> Path:
    """``folder/{class}/`` of symlinks to the images, the layout flow_from_directory reads."""
    for index, (path, label) in enumerate(zip(images.paths, images.labels, strict=True)):
        target = folder / images.class_names[label] / f"{index:05d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return folder


def _epoch(model, data, steps: int | None) -> tuple[float, float]:
    """Wall and process CPU seconds of one training epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, epochs=1, verbose=0, shuffle=False, steps_per_epoch=steps)
    return time.perf_counter() - wall, time.process_time() - cpu


def _seed_flow(images: LabelledImages, spec: Preprocessing, batch: int, one_hot: bool, work_dir: Path):
    """The seed's generator over ``images``, or None when scipy (which it needs) is missing."""
    try:
        import scipy  # noqa: F401  (ImageDataGenerator's shear and zoom need it)
    except ImportError:
        return None
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rescale=1.0 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    return generator.flow_from_directory(
        _symlink_folder(images, work_dir / "seed-pipeline"), target_size=(spec.height, spec.width),
        batch_size=batch, class_mode="categorical" if one_hot else "binary", seed=0)


def training_pipelines(images: LabelledImages, config: TrainingConfig, work_dir: Path,
                       repeats: int = 1) -> dict:
    """Per pipeline: images, median epoch wall and CPU seconds over ``repeats`` epochs (the
    pipelines take turns, epoch by epoch), images per second; plus the one-off decode time.
    ``config`` is the run's (``saved_config``): its model, compiled as it trained, and its
    batch size and preprocessing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from pneumocnn.training.architectures import compiled_model
    from pneumocnn.training.augmentations import SEED_AUGMENTATION
    from pneumocnn.training.data import decode_all, make_dataset

    spec, batch = config.preprocessing(), config.batch_size
    start = time.perf_counter()
    decoded = decode_all(images, spec, None)
    decode_seconds = time.perf_counter() - start
    n = len(decoded.labels)

    def build():
        keras.utils.set_random_seed(config.random_seed)
        return compiled_model(config, n)

    one_hot = build().output_shape[-1] == 2
    targets = (np.eye(2, dtype=np.float32)[decoded.labels] if one_hot
               else decoded.labels.astype(np.float32)[:, None])
    ours = make_dataset(decoded, spec, batch, one_hot=one_hot, shuffle=True,
                        augmentation=SEED_AUGMENTATION)
    memory = tf.data.Dataset.from_tensor_slices((to_model_inputs(decoded.pixels, spec), targets)).batch(batch)
    feeds = {"pneumocnn": (ours, None, n), "in-memory": (memory, None, n)}
    flow = _seed_flow(images, spec, batch, one_hot, work_dir)
    if flow is not None:
        feeds["seed"] = (flow, len(flow), flow.samples)

    models = {name: build() for name in feeds}
    for name, (data, steps, _) in feeds.items():  # untimed: tracing and graph building
        models[name].fit(data.take(2) if steps is None else data, epochs=1, verbose=0, shuffle=False,
                         steps_per_epoch=None if steps is None else 2)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in feeds}
    for _ in range(repeats):
        for name, (data, steps, _) in feeds.items():
            runs[name].append(_epoch(models[name], data, steps))

    pipelines = {}
    for name, (_, _, count) in feeds.items():
        wall, cpu = (float(np.median(column)) for column in zip(*runs[name], strict=True))
        pipelines[name] = {"label": LABELS[name], "images": count, "epoch_s": wall, "cpu_s": cpu,
                           "images_per_s": count / wall, "epochs": runs[name]}
    if flow is None:
        pipelines["seed"] = {"label": LABELS["seed"], "error": "needs scipy: pip install scipy"}
    return {"images": n, "batch_size": batch, "repeats": repeats, "decode_once_s": decode_seconds,
            "pipelines": pipelines}
