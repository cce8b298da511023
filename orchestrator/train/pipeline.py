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

from orchestrator.train.augmentations import Augmentation


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


def head_class_weights(y: np.ndarray, heads: tuple) -> dict[str, np.ndarray]:
    """`balanced_class_weights` of every classification head, from the (N, H) targets."""
    return {h.name: balanced_class_weights(y[:, i].astype(np.int64), len(h.classes))
            for i, h in enumerate(heads) if h.is_classification}


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
    weights = np.ones(num_classes, np.float32) if class_weights is None else class_weights
    class_w = tf.constant(weights)

    def targets(labels: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(tf.cast(labels, tf.int32), num_classes)

    ds = _batches(x, y.astype(np.int32), tf.int32, (None,), targets, batch_size, seed,
                  augmentation, mixup_alpha)
    ds = ds.map(lambda a, b: (a, b, tf.linalg.matvec(b, class_w)))
    return ds.prefetch(tf.data.AUTOTUNE)


def multihead_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    heads: tuple,
    batch_size: int,
    seed: int,
    augmentation: Augmentation = Augmentation(),
    mixup_alpha: float = 0.0,
    class_weights: dict[str, np.ndarray] | None = None,
) -> tf.data.Dataset:
    """(images, {head: target}, {head: sample weight}) batches for a multi-head model.

    `y` is the (N, H) target matrix (`orchestrator.models.heads`): a classification head trains on
    one-hot labels, a regression head on its value (N, 1). MixUp draws one λ per example and
    applies it to the image, every head's one-hot labels and every regression value alike.
    Keras's `class_weight` does not work for several outputs, so a classification head's class
    weights come as its own per-sample weights (mixed with its labels); regression heads 1.
    """
    class_weights = class_weights or {}
    columns = {h.name: i for i, h in enumerate(heads)}

    def targets(values: tf.Tensor) -> dict:
        out = {}
        for head in heads:
            column = values[:, columns[head.name]]
            out[head.name] = (tf.one_hot(tf.cast(column, tf.int32), len(head.classes))
                              if head.is_classification else tf.reshape(column, (-1, 1)))
        return out

    def weights(labels: dict) -> dict:
        out = {}
        for head in heads:
            w = class_weights.get(head.name)
            if head.is_classification and w is not None:
                out[head.name] = tf.linalg.matvec(labels[head.name], tf.constant(w, tf.float32))
            else:
                out[head.name] = tf.ones_like(labels[head.name][:, 0])
        return out

    ds = _batches(x, np.asarray(y, np.float32), tf.float32, (None, len(heads)), targets,
                  batch_size, seed, augmentation, mixup_alpha)
    ds = ds.map(lambda a, b: (a, b, weights(b)))
    return ds.prefetch(tf.data.AUTOTUNE)


def _batches(x: np.ndarray, y: np.ndarray, y_dtype, y_shape: tuple, targets, batch_size: int,
             seed: int, augmentation: Augmentation, mixup_alpha: float) -> tf.data.Dataset:
    """Shuffled index batches -> gathered uint8 images (as float32) and `targets(labels)`,
    augmented, then MixUp'd; the labels may be any structure of (N, ...) float tensors."""
    n = len(x)
    shape = tuple(x.shape[1:])

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads from the memory map; order is reshuffled anyway
        return x[idx], y[idx]

    def load(idx: tf.Tensor):
        images, labels = tf.numpy_function(gather, [idx], [tf.uint8, y_dtype])
        images = tf.cast(tf.ensure_shape(images, (None, *shape)), tf.float32)
        return images, targets(tf.ensure_shape(labels, y_shape))

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmentation_layers(augmentation, seed)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if mixup_alpha > 0:
        ds = ds.map(lambda a, b: mixup(a, b, mixup_alpha, seed))
    return ds


def mixup(images: tf.Tensor, labels, alpha: float, seed: int):
    """MixUp (Zhang et al. 2018): blend each example with a shuffled partner, labels alike:
    `labels` may be one tensor or a dict of them (several heads: one λ for all)."""
    batch = tf.shape(images)[0]
    g1 = tf.random.gamma([batch], alpha, seed=seed)
    g2 = tf.random.gamma([batch], alpha, seed=seed + 1)
    lam = g1 / (g1 + g2 + 1e-12)
    order = tf.random.shuffle(tf.range(batch), seed=seed + 2)
    lam_x = tf.reshape(lam, (-1, 1, 1, 1))
    lam_y = tf.reshape(lam, (-1, 1))
    mixed_x = lam_x * images + (1.0 - lam_x) * tf.gather(images, order)
    mixed_y = tf.nest.map_structure(
        lambda t: lam_y * t + (1.0 - lam_y) * tf.gather(t, order), labels)
    return mixed_x, mixed_y


def make_loss(name: str, *, label_smoothing: float = 0.0, focal_gamma: float = 2.0):
    """cross_entropy and class_weighted share the loss; class weights come as sample weights."""
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=focal_gamma,
                                                         label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def multihead_losses(heads: tuple, scales: dict, head_weights: dict[str, float], name: str, *,
                     label_smoothing: float = 0.0,
                     focal_gamma: float = 2.0) -> tuple[dict, dict[str, float]]:
    """Per head, the loss and its weight in the total. A classification head takes the trial's
    loss (`make_loss`); a regression head Huber or MSE on the standardised value: the model
    answers in the head's unit, so the loss is taken in that unit (Huber's delta one standard
    deviation) and its weight divided by the variance, which is the same number."""
    losses, weights = {}, {}
    for head in heads:
        weight = head_weights.get(head.name, head.loss_weight)
        if head.is_classification:
            losses[head.name] = make_loss(name, label_smoothing=label_smoothing,
                                          focal_gamma=focal_gamma)
            weights[head.name] = weight
            continue
        std = scales[head.name].std
        losses[head.name] = (keras.losses.Huber(delta=std) if head.loss == "huber"
                             else keras.losses.MeanSquaredError())
        weights[head.name] = weight / std ** 2
    return losses, weights
