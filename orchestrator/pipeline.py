"""tf.data input pipelines: batches gathered from the cached uint8 arrays, augmented on the fly.

Images stay uint8 in the (memory-mapped or object-store) array until a batch is gathered, so a
trial never holds a float copy of its data set. Augmentation, MixUp and class weights live here,
inside the pipeline, so they run in TensorFlow's threads and never touch validation data.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from orchestrator.augmentations import Augmentation


def augmentation_layers(aug: Augmentation, seed: int) -> keras.Sequential | None:
    layers: list[keras.layers.Layer] = []
    flips = "horizontal" * aug.hflip + "_and_" * (aug.hflip and aug.vflip) + "vertical" * aug.vflip
    if flips:
        layers.append(keras.layers.RandomFlip(flips, seed=seed))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1))
    if aug.shift:
        layers.append(keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="reflect",
                                                     seed=seed + 2))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom(aug.zoom, fill_mode="reflect", seed=seed + 3))
    if aug.brightness:
        layers.append(keras.layers.RandomBrightness(aug.brightness, value_range=(0.0, 255.0),
                                                    seed=seed + 4))
    return keras.Sequential(layers, name="augmentation") if layers else None


def balanced_class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (k * count) per class from the training split; absent classes get weight 0."""
    weights = np.zeros(num_classes, dtype=np.float32)
    present = np.unique(y)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


def training_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    seed: int,
    augmentation: Augmentation = Augmentation(),
    mixup_alpha: float = 0.0,
    class_weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """(images float32 0..255, one-hot labels, sample weights) batches, reshuffled every epoch.

    Class weights travel as per-sample weights: Keras's `class_weight` argument
    is ignored for some dataset/label combinations, sample weights never are, and they mix
    correctly under MixUp.
    """
    n = len(x)
    shape = tuple(x.shape[1:])
    weights = np.ones(num_classes, np.float32) if class_weights is None else class_weights

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads from the memory map; order is reshuffled anyway
        return x[idx], y[idx].astype(np.int32)

    def load(idx: tf.Tensor):
        images, labels = tf.numpy_function(gather, [idx], [tf.uint8, tf.int32])
        images = tf.cast(tf.ensure_shape(images, (None, *shape)), tf.float32)
        onehot = tf.one_hot(tf.ensure_shape(labels, (None,)), num_classes)
        return images, onehot

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmentation_layers(augmentation, seed)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if mixup_alpha > 0:
        ds = ds.map(lambda a, b: mixup(a, b, mixup_alpha, seed))
    class_w = tf.constant(weights)
    ds = ds.map(lambda a, b: (a, b, tf.linalg.matvec(b, class_w)))
    return ds.prefetch(tf.data.AUTOTUNE)


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: int):
    """MixUp (Zhang et al. 2018): blend each example with a shuffled partner, labels alike."""
    batch = tf.shape(images)[0]
    g1 = tf.random.gamma([batch], alpha, seed=seed)
    g2 = tf.random.gamma([batch], alpha, seed=seed + 1)
    lam = g1 / (g1 + g2 + 1e-12)
    order = tf.random.shuffle(tf.range(batch), seed=seed + 2)
    lam_x = tf.reshape(lam, (-1, 1, 1, 1))
    lam_y = tf.reshape(lam, (-1, 1))
    mixed_x = lam_x * images + (1.0 - lam_x) * tf.gather(images, order)
    mixed_y = lam_y * labels + (1.0 - lam_y) * tf.gather(labels, order)
    return mixed_x, mixed_y


def make_loss(name: str, *, label_smoothing: float = 0.0, focal_gamma: float = 2.0):
    """cross_entropy and class_weighted share the loss; class weights come as sample weights."""
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=focal_gamma,
                                                         label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
