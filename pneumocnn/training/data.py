"""Training input: decode each image once into a cache, then batch and augment in the graph.

Decoding uses :func:`pneumocnn.core.preprocessing.load_pixels`, the same function the runtime uses,
and the graph applies the same ``pixels * scale`` and channel repeat as
:func:`pneumocnn.core.preprocessing.to_model_input`.

Augmentation reproduces the seed's ``ImageDataGenerator(shear_range=0.2, zoom_range=0.2,
horizontal_flip=True)``: a shear angle uniform in [-0.2, 0.2] *degrees* (Keras read the value
in degrees), independent horizontal and vertical zoom factors uniform in [0.8, 1.2], a
horizontal flip with probability 1/2, bilinear sampling and nearest-edge fill. Random numbers
are stateless and derived from ``(seed, epoch, batch)``, so a resumed run sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pneumocnn._version import __version__
from pneumocnn.core.durable_files import atomic_write
from pneumocnn.core.errors import DatasetError, InputError
from pneumocnn.core.labelled_data import LabelledImages
from pneumocnn.core.preprocessing import Preprocessing, load_pixels
from pneumocnn.training.augmentations import Augmentation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImages:
    """Decoded, resized uint8 pixels ``(N, H, W)`` with labels; unreadable files left out."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: tuple[Path, ...]
    skipped: tuple[str, ...]  # "path: reason" for each file that could not be decoded


def decode_all(images: LabelledImages, spec: Preprocessing, cache_dir: Path | None) -> DecodedImages:
    """Decode every image once (threads; Pillow releases the GIL), reusing a cache file in
    ``cache_dir`` keyed by file names, sizes, modification times and ``spec``."""
    cache = cache_dir / f"decoded-{_cache_key(images, spec)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as stored:
                ok = stored["ok"]
                return _assemble(images, stored["pixels"], ok, json.loads(str(stored["skipped"])))
        except (OSError, ValueError, KeyError) as error:
            log.warning("ignoring unreadable cache %s (%s)", cache, error)

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_pixels(path, spec)
        except InputError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(decode, images.paths))
    ok = np.array([isinstance(d, np.ndarray) for d in decoded])
    skipped = [d for d in decoded if isinstance(d, str)]
    for message in skipped:
        log.warning("skipping unreadable training image %s", message)
    if not ok.any():
        raise DatasetError("none of the images could be decoded")
    pixels = np.stack([d for d in decoded if isinstance(d, np.ndarray)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as stream:
            np.savez(stream, pixels=pixels, ok=ok, skipped=json.dumps(skipped))
    return _assemble(images, pixels, ok, skipped)


def _assemble(images: LabelledImages, pixels: np.ndarray, ok: np.ndarray, skipped) -> DecodedImages:
    kept = np.flatnonzero(ok)
    return DecodedImages(
        pixels, images.labels[kept], tuple(images.paths[i] for i in kept), tuple(skipped)
    )


def _cache_key(images: LabelledImages, spec: Preprocessing) -> str:
    key = {"pneumocnn": __version__, "spec": spec.to_dict()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for path in images.paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def make_dataset(
    data: DecodedImages,
    spec: Preprocessing,
    batch_size: int,
    *,
    one_hot: bool = False,
    shuffle: bool = False,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> tf.data.Dataset:
    """A batched, prefetched ``tf.data`` pipeline over decoded images.

    With ``shuffle`` (training) the order is shuffled, with ``augmentation`` the images are
    augmented, both determined by ``(seed, epoch)``; without either, images come as they are,
    in order (evaluation).
    """
    labels = data.labels.astype(np.float32)
    targets = np.eye(2, dtype=np.float32)[data.labels] if one_hot else labels[:, None]
    dataset = tf.data.Dataset.from_tensor_slices((data.pixels, targets))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed * 100_003 + epoch,
                                  reshuffle_each_iteration=False)
    dataset = dataset.batch(batch_size).enumerate()

    def to_inputs(batch_index, batch):
        pixels, target = batch
        images = tf.cast(pixels, tf.float32)[..., tf.newaxis] * tf.constant(spec.scale, tf.float32)
        if augmentation is not None:
            batch_seed = tf.stack([tf.constant(seed, tf.int64), epoch * 1_000_003 + batch_index])
            images = _augment(images, augmentation, batch_seed)
            if augmentation.mixup:
                images, target = _mixup(images, target, augmentation.mixup,
                                        tf.random.experimental.stateless_fold_in(batch_seed, 3))
        if spec.channels > 1:
            images = tf.repeat(images, spec.channels, axis=-1)
        return images, target

    return dataset.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def _augment(images: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Augment a batch ``(B, H, W, 1)`` of values in [0, 1] with stateless randomness from
    ``seed``: flip, then one affine warp (shear, zoom, rotation, translation), then intensity."""
    import keras

    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    extra = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), num=7)

    def uniform(key: tf.Tensor, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([count], key, low, high)

    if augmentation.horizontal_flip:
        flip = uniform(seeds[0], 0.0, 1.0) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    shear = np.deg2rad(augmentation.shear_degrees)
    angle = uniform(seeds[1], -shear, shear)
    zoom_x = uniform(seeds[2], 1.0 - augmentation.zoom, 1.0 + augmentation.zoom)
    zoom_y = uniform(seeds[3], 1.0 - augmentation.zoom, 1.0 + augmentation.zoom)
    turn = np.deg2rad(augmentation.rotation_degrees)
    theta = uniform(extra[0], -turn, turn)
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    shift_x = uniform(extra[1], -augmentation.translate, augmentation.translate) * width
    shift_y = uniform(extra[2], -augmentation.translate, augmentation.translate) * height
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation . shear
    # . zoom, centred on the image as ImageDataGenerator does, then translated.
    s0, s1 = zoom_x, -tf.sin(angle) * zoom_y
    t1 = tf.cos(angle) * zoom_y
    a0, a1 = tf.cos(theta) * s0, tf.cos(theta) * s1 - tf.sin(theta) * t1
    b0, b1 = tf.sin(theta) * s0, tf.sin(theta) * s1 + tf.cos(theta) * t1
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a2 = cx - (a0 * cx + a1 * cy) + shift_x
    b2 = cy - (b0 * cx + b1 * cy) + shift_y
    zeros = tf.zeros_like(zoom_x)
    transform = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = keras.ops.image.affine_transform(
        images, transform, interpolation="bilinear", fill_mode="nearest"
    )
    if augmentation.sharpness:
        images = _adjust_sharpness(images, augmentation.sharpness,
                                   tf.random.experimental.stateless_fold_in(seed, 2))
    return _adjust_intensity(images, augmentation, extra[3:])


def _mixup(images: tf.Tensor, targets: tf.Tensor, alpha: float,
           key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each image of a batch and its target with those in the mirrored position of the
    batch (first with last, ...) by a weight drawn from Beta(alpha, alpha)."""
    keys = tf.random.experimental.stateless_split(key, num=2)
    count = [tf.shape(images)[0]]
    a = tf.random.stateless_gamma(count, keys[0], alpha)
    b = tf.random.stateless_gamma(count, keys[1], alpha)
    weight = a / tf.maximum(a + b, 1e-30)  # both draws can underflow to 0 for a small alpha
    weight_images, weight_targets = weight[:, None, None, None], weight[:, None]
    images = weight_images * images + (1.0 - weight_images) * tf.reverse(images, axis=[0])
    targets = weight_targets * targets + (1.0 - weight_targets) * tf.reverse(targets, axis=[0])
    return images, targets


def _adjust_sharpness(images: tf.Tensor, spread: float, key: tf.Tensor) -> tf.Tensor:
    """Blend each image of ``(B, H, W, 1)`` with its Gaussian blur (sigma 1 pixel) by a weight
    drawn from ``[-spread, spread]``: softer above 0, sharper (unsharp masking) below."""
    taps = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = tf.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]], mode="REFLECT")
    blurred = tf.nn.conv2d(padded, tf.constant(kernel[:, :, None, None], tf.float32),
                           strides=1, padding="VALID")
    weight = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], key, -spread, spread)
    return tf.clip_by_value(images + weight * (blurred - images), 0.0, 1.0)


def _adjust_intensity(images: tf.Tensor, augmentation: Augmentation, keys) -> tf.Tensor:
    """Gamma, contrast, brightness and noise on values in [0, 1], clipped back to [0, 1]."""
    a = augmentation
    if not (a.gamma or a.contrast or a.brightness or a.noise):
        return images
    count = tf.shape(images)[0]

    def per_image(key: tf.Tensor, spread: float) -> tf.Tensor:
        return tf.random.stateless_uniform([count, 1, 1, 1], key, -spread, spread)

    images = tf.clip_by_value(images, 0.0, 1.0) ** tf.exp(per_image(keys[0], a.gamma))
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * (1.0 + per_image(keys[1], a.contrast)) + mean
    images = images + per_image(keys[2], a.brightness)
    if a.noise:
        images = images + tf.random.stateless_normal(tf.shape(images), keys[3], stddev=a.noise)
    return tf.clip_by_value(images, 0.0, 1.0)
