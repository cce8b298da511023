"""The tf.data training pipeline: shapes, weights, MixUp, and the task's flip rules."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.train.augmentations import AUGMENTATIONS, augmentation_for
from orchestrator.train.pipeline import (balanced_class_weights,
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


# --- several heads -----------------------------------------------------------------------------

def test_multihead_batches_carry_every_heads_target_and_its_sample_weights():
    from orchestrator.train.pipeline import head_class_weights, multihead_dataset
    from tasks.multihead import MULTIHEAD

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.stack([rng.integers(0, 4, 20), np.r_[[0] * 14, [1] * 4, [2] * 2],
                  rng.uniform(20, 60, 20)], axis=1)
    weights = head_class_weights(y, MULTIHEAD.heads)
    assert set(weights) == {"shape", "texture"}
    ds = multihead_dataset(x, y, heads=MULTIHEAD.heads, batch_size=20, seed=0,
                           class_weights={"texture": weights["texture"]})
    images, targets, sample_w = next(iter(ds))
    assert targets["shape"].shape == (20, 4) and targets["texture"].shape == (20, 3)
    assert targets["size"].shape == (20, 1)
    # rows are reshuffled: match each batch row to its source row by its pixels
    order = [int(np.argmin(np.abs(x.reshape(20, -1) - row).sum(axis=1)))
             for row in images.numpy().reshape(20, -1)]
    np.testing.assert_allclose(targets["size"].numpy()[:, 0], y[order, 2], rtol=1e-6)
    np.testing.assert_array_equal(targets["shape"].numpy().argmax(axis=1), y[order, 0])
    np.testing.assert_allclose(sample_w["texture"].numpy(),
                               weights["texture"][y[order, 1].astype(int)], rtol=1e-6)
    np.testing.assert_allclose(sample_w["shape"].numpy(), 1.0)
    np.testing.assert_allclose(sample_w["size"].numpy(), 1.0)


def test_multihead_mixup_uses_one_lambda_per_example_for_the_image_and_every_head():
    from orchestrator.train.pipeline import multihead_dataset
    from tasks.multihead import MULTIHEAD

    n = 32
    classes = np.arange(n) % 2  # shape and texture 0 or 1, the size 20 or 60 with them
    y = np.stack([classes, classes, 20.0 + 40.0 * classes], axis=1)
    x = np.repeat((classes * 200).astype(np.uint8)[:, None, None, None], 4, axis=1)
    x = np.repeat(np.repeat(x, 4, axis=2), 3, axis=3)  # image 0 or 200 everywhere
    ds = multihead_dataset(x, y, heads=MULTIHEAD.heads, batch_size=n, seed=3, mixup_alpha=0.4)
    images, targets, _ = next(iter(ds))
    share = images.numpy()[:, 0, 0, 0] / 200.0  # how much of a class-1 image is in each example
    assert 0.0 < share.std()  # something was mixed
    np.testing.assert_allclose(targets["shape"].numpy()[:, 1], share, atol=1e-5)
    np.testing.assert_allclose(targets["texture"].numpy()[:, 1], share, atol=1e-5)
    np.testing.assert_allclose(targets["size"].numpy()[:, 0], 20.0 + 40.0 * share, atol=1e-3)


def test_zoom_is_off_when_the_task_measures_something_in_the_image():
    assert augmentation_for("medium", ("hflip",)).zoom > 0
    assert augmentation_for("medium", ("hflip",), measures=True).zoom == 0.0
