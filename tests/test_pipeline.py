"""The tf.data training pipeline: shapes, weights, MixUp, and the task's flip rules."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.augmentations import AUGMENTATIONS, augmentation_for
from orchestrator.pipeline import (balanced_class_weights,
                                   training_dataset)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    y = np.array([0] * 17 + [1] * 6)
    return x, y


def test_batches_cover_every_image_once_per_epoch(arrays):
    x, y = arrays
    ds = training_dataset(x, y, num_classes=2, batch_size=5, seed=1)
    seen = []
    for images, onehot, weights in ds:
        assert images.dtype.name == "float32" and images.shape[1:] == (16, 16, 3)
        seen.extend(images.numpy().reshape(len(images), -1)[:, :4].tolist())
        np.testing.assert_allclose(weights.numpy(), 1.0)
        assert onehot.shape[1] == 2
    expected = x.reshape(len(x), -1)[:, :4].astype(np.float32).tolist()
    assert sorted(seen) == sorted(expected)


def test_class_weights_arrive_as_sample_weights(arrays):
    x, y = arrays
    weights = balanced_class_weights(y, 2)
    np.testing.assert_allclose(weights, [23 / (2 * 17), 23 / (2 * 6)], rtol=1e-6)
    ds = training_dataset(x, y, num_classes=2, batch_size=23, seed=0, class_weights=weights)
    _, onehot, sample_w = next(iter(ds))
    np.testing.assert_allclose(sample_w.numpy(), onehot.numpy() @ weights, rtol=1e-6)
    assert balanced_class_weights(np.array([0, 0, 2]), 3)[1] == 0.0  # absent class


def test_mixup_blends_images_and_labels(arrays):
    x, y = arrays
    ds = training_dataset(x, y, num_classes=2, batch_size=23, seed=3, mixup_alpha=0.4)
    images, onehot, _ = next(iter(ds))
    labels = onehot.numpy()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    assert ((labels > 0.01) & (labels < 0.99)).any()  # some labels are mixtures
    assert not np.allclose(images.numpy(), np.round(images.numpy()))  # some pixels are blends


def test_augmentation_changes_pixels_but_keeps_range(arrays):
    x, y = arrays
    ds = training_dataset(x, y, num_classes=2, batch_size=23, seed=0,
                          augmentation=AUGMENTATIONS["heavy"])
    images, _, _ = next(iter(ds))
    plain, _, _ = next(iter(training_dataset(x, y, num_classes=2, batch_size=23, seed=0)))
    assert not np.allclose(np.sort(images.numpy().ravel()), np.sort(plain.numpy().ravel()))
    assert images.numpy().min() >= 0.0 and images.numpy().max() <= 255.0 + 1e-3


def test_presets_drop_transforms_the_task_forbids():
    chest = augmentation_for("heavy", ("rotate", "brightness"))
    assert not chest.hflip and not chest.vflip and chest.rotation > 0
    skin = augmentation_for("heavy", ("hflip", "vflip", "rotate", "brightness"))
    assert skin.hflip and skin.vflip
    assert augmentation_for("none", ("hflip",)).hflip is False
