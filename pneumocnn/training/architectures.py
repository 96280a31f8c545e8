"""Keras models: the seed report's TO-BE and AS-IS CNNs as the report describes them, the small
batch-norm CNN of the bundled model and its depthwise-separable variants, and `compiled_model`,
which builds and compiles one from a `TrainingConfig` for training and the pipeline benchmark
alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import keras
from keras import layers

from pneumocnn.training.settings import TrainingConfig


@dataclass(frozen=True)
class Architecture:
    """A named model recipe: how to build it and how the seed compiled it."""

    name: str
    build: Callable[[tuple[int, int, int], int], keras.Model]  # (input shape, outputs)
    loss: str
    optimizer: str
    outputs: int  # 1: sigmoid probability of the positive class; 2: softmax over both classes


def output_layer(outputs: int) -> layers.Dense:
    """The classifier head: one sigmoid unit, or a softmax over two classes."""
    if outputs not in (1, 2):
        raise ValueError(f"outputs must be 1 (sigmoid) or 2 (softmax), got {outputs}")
    return layers.Dense(outputs, activation="sigmoid" if outputs == 1 else "softmax")


def seed_to_be(input_shape: tuple[int, int, int], outputs: int = 1) -> keras.Model:
    """The seed's final (TO-BE) CNN: four same-padded 3x3 conv blocks, Dense 128, then
    (by default) one sigmoid unit."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.4),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            output_layer(outputs),
        ],
        name="seed_to_be",
    )


def seed_as_is(input_shape: tuple[int, int, int], outputs: int = 2) -> keras.Model:
    """The seed's starting (AS-IS) CNN: three valid-padded conv blocks, Dense 64, then
    (by default) a two-class softmax."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.4),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.5),
            output_layer(outputs),
        ],
        name="seed_as_is",
    )


SMALL_BN_FILTERS = (16, 32, 64, 128, 128)
WIDE_FILTERS = (32, 64, 128, 256, 256)


def small_bn(input_shape: tuple[int, int, int], outputs: int = 1,
             filters: tuple[int, ...] = SMALL_BN_FILTERS,
             separable_from: int | None = None) -> keras.Model:
    """A small CNN in the seed's compute budget: five 3x3 conv + batch-norm blocks with 2x2
    max-pooling, global average pooling, Dropout 0.3, (by default) one sigmoid unit.
    ``filters``: each block's width (16 to 128 by default); from block index ``separable_from``
    on, the convolutions are depthwise-separable (fewer multiply-adds for the same width)."""
    blocks = []
    for index, count in enumerate(filters):
        separable = separable_from is not None and index >= separable_from
        conv = layers.SeparableConv2D if separable else layers.Conv2D
        blocks += [
            conv(count, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
        ]
    return keras.Sequential(
        [keras.Input(input_shape), *blocks, layers.GlobalAveragePooling2D(),
         layers.Dropout(0.3), output_layer(outputs)],
        name="small_bn" if separable_from is None else "small_sep",
    )


ARCHITECTURES = {
    "seed-to-be": Architecture("seed-to-be", seed_to_be, "binary_crossentropy", "adam", 1),
    "seed-as-is": Architecture(
        "seed-as-is", seed_as_is, "categorical_crossentropy", "rmsprop", 2
    ),
    "small-bn": Architecture("small-bn", small_bn, "binary_crossentropy", "adam", 1),
    # small-bn with depthwise-separable blocks 2-5: about half its int8 latency
    "small-sep": Architecture("small-sep", partial(small_bn, separable_from=1),
                              "binary_crossentropy", "adam", 1),
    # ... and twice its width: about 1.5x small-bn's int8 latency
    "small-sep-wide": Architecture(
        "small-sep-wide", partial(small_bn, filters=WIDE_FILTERS, separable_from=1),
        "binary_crossentropy", "adam", 1),
}


def get_architecture(name: str) -> Architecture:
    """Look up a recipe by name (see ``ARCHITECTURES``)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}") from None


def make_optimizer(name: str, learning_rate: float | None, cosine_decay_steps: int | None = None,
                   ema_momentum: float | None = None) -> keras.optimizers.Optimizer:
    """Build the named Keras optimizer, at its Keras default learning rate unless given; with
    ``cosine_decay_steps``, the rate decays from there to 0 along a cosine over that many steps;
    with ``ema_momentum``, it also keeps an exponential moving average of the weights."""
    optimizer_class = type(keras.optimizers.get(name))
    default = inspect.signature(optimizer_class).parameters["learning_rate"].default
    rate = learning_rate if learning_rate is not None else float(default)
    if cosine_decay_steps:
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=cosine_decay_steps)
    if ema_momentum is None:
        return optimizer_class(learning_rate=rate)
    return optimizer_class(learning_rate=rate, use_ema=True, ema_momentum=ema_momentum)


def compiled_model(config: TrainingConfig, train_images: int) -> keras.Model:
    """A freshly built model of ``config``'s architecture, compiled as a training run with
    ``config`` on ``train_images`` images compiles it: output head, loss, optimizer, learning
    rate and schedule (the architecture's own unless ``config`` overrides them), accuracy as
    metric. Its initial weights come from Keras's global random seed."""
    architecture = get_architecture(config.architecture)
    outputs, loss, optimizer = config.compile_settings(architecture)
    model = architecture.build(config.preprocessing().input_shape, outputs)
    model.compile(
        optimizer=make_optimizer(optimizer, config.learning_rate, config.decay_steps(train_images),
                                 config.ema_momentum),
        loss=loss,
        metrics=["accuracy"],
    )
    return model
