"""pneumocnn.training.data and .augmentations: the tf.data input pipeline (augmentation,
shuffling)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.training  # the training wing: every test here needs TensorFlow


def test_shift_augmentation_is_deterministic_and_in_range():
    import tensorflow as tf

    from pneumocnn.training.augmentations import SEED_AUGMENTATION, SHIFT_AUGMENTATION
    from pneumocnn.training.data import _augment

    images = tf.constant(np.random.default_rng(0).random((4, 32, 32, 1)), tf.float32)
    seed = tf.constant([3, 7], tf.int64)
    first = _augment(images, SHIFT_AUGMENTATION, seed).numpy()
    again = _augment(images, SHIFT_AUGMENTATION, seed).numpy()
    other = _augment(images, SHIFT_AUGMENTATION, tf.constant([3, 8], tf.int64)).numpy()
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not np.allclose(first, _augment(images, SEED_AUGMENTATION, seed).numpy())


def test_sharpness_augmentation_blurs_some_images_and_sharpens_others():
    import tensorflow as tf

    from pneumocnn.training.augmentations import AUGMENTATIONS
    from pneumocnn.training.data import _adjust_sharpness

    assert AUGMENTATIONS["shift-zoom-sharpness"].sharpness > 0
    images = tf.constant(np.random.default_rng(0).random((16, 32, 32, 1)), tf.float32)
    out = _adjust_sharpness(images, 1.0, tf.constant([1, 2], tf.int64)).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0

    def roughness(batch: np.ndarray) -> np.ndarray:  # mean absolute step between neighbours
        return np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2, 3))

    change = roughness(out) / roughness(images.numpy())
    assert (change < 0.8).any() and (change > 1.2).any()
    assert np.array_equal(out, _adjust_sharpness(images, 1.0, tf.constant([1, 2], tf.int64)))


def test_mixup_blends_images_and_labels_with_the_same_weight():
    from dataclasses import replace

    from pneumocnn.core.preprocessing import Preprocessing
    from pneumocnn.training.augmentations import AUGMENTATIONS
    from pneumocnn.training.data import DecodedImages, make_dataset

    mixup = AUGMENTATIONS["shift-zoom-mixup"]
    assert mixup.mixup > 0
    plain = replace(mixup, mixup=0.0)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 4)  # each image's mirror in a batch of 8 differs
    pixels = np.random.default_rng(0).integers(0, 256, (32, 16, 16), dtype=np.uint8)
    data = DecodedImages(pixels, labels, tuple(), ())
    spec = Preprocessing(height=16, width=16, channels=1)

    def batches(augmentation) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(make_dataset(data, spec, 8, augmentation=augmentation, seed=3, epoch=1))
        return (np.concatenate([x.numpy() for x, _ in pairs]),
                np.concatenate([y.numpy() for _, y in pairs])[:, 0])

    images, targets = batches(mixup)
    augmented, same_labels = batches(plain)  # the same augmentation draws, unmixed
    assert np.array_equal(same_labels, labels)
    weights = np.where(labels == 1, targets, 1.0 - targets)  # each image's own share
    assert ((weights > 0.05) & (weights < 0.95)).sum() >= 4  # some images are real blends
    mirrors = augmented.reshape(4, 8, 16, 16, 1)[:, ::-1].reshape(augmented.shape)
    expected = weights[:, None, None, None] * augmented + (1 - weights[:, None, None, None]) * mirrors
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert np.array_equal(images, batches(mixup)[0])  # deterministic for a seed and epoch


def test_mixup_refuses_class_weights():
    from pneumocnn.training.settings import TrainingConfig

    with pytest.raises(ValueError, match="shift-zoom-mixup.*class_weight"):
        TrainingConfig(augmentation="shift-zoom-mixup", class_weight="balanced").check()
    TrainingConfig(augmentation="shift-zoom-mixup").check()


def test_training_batches_are_shuffled_with_or_without_augmentation():
    """Class folders are read in order: unshuffled training batches would hold one class at a
    time (a run without augmentation collapsed that way before this was fixed)."""
    from pneumocnn.core.preprocessing import Preprocessing
    from pneumocnn.training.data import DecodedImages, make_dataset

    labels = np.repeat([0, 1], 32)
    data = DecodedImages(np.zeros((64, 8, 8), np.uint8), labels, tuple(), ())
    spec = Preprocessing(height=8, width=8, channels=1)

    def order(**options) -> np.ndarray:
        return np.concatenate([t.numpy().ravel() for _, t in make_dataset(data, spec, 8, **options)])

    assert np.array_equal(order(), labels)  # evaluation keeps the order
    shuffled = order(shuffle=True, seed=0, epoch=0)
    assert sorted(shuffled) == sorted(labels) and not np.array_equal(shuffled, labels)
    assert np.array_equal(shuffled, order(shuffle=True, seed=0, epoch=0))
    assert not np.array_equal(shuffled, order(shuffle=True, seed=0, epoch=1))
    first_batches = shuffled[:32]
    assert 0 < first_batches.mean() < 1  # both classes early in the epoch
