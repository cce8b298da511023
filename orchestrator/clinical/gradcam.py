"""Grad-CAM (Selvaraju et al. 2017) for the models `orchestrator.models.classifier.build_model` makes.

The map is taken at the backbone's output (its last feature map): the gradient of the class's
logit with respect to each channel, averaged over space, weights the channels; ReLU; resized to
the image; scaled to 0..1. The model is run layer by layer (preprocess -> backbone -> head), so
the same code serves every registered backbone, nested model or not.
"""
from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf


def _features(model, images):
    return model.get_layer("backbone")(model.get_layer("preprocess")(images), training=False)


def _logits(model, features, images):
    from orchestrator.models.classifier import head_inputs

    h = model.get_layer("head_dense")(head_inputs(model, features, images))
    h = model.get_layer("head_dropout")(h, training=False)
    return model.get_layer("logits")(h)


def gradcam(model, images: np.ndarray, class_index: int | np.ndarray) -> np.ndarray:
    """(N, H, W) maps in 0..1 for uint8 or float (N, H, W, 3) images in 0..255.

    `class_index`: one class for every image, or one per image.
    """
    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    classes = np.broadcast_to(np.asarray(class_index), (len(images),))
    features = _features(model, x)
    with tf.GradientTape() as tape:
        tape.watch(features)
        logits = _logits(model, features, x)
        chosen = tf.gather(logits, classes, axis=1, batch_dims=1)
    grads = tape.gradient(chosen, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(weights * features, tf.float32), axis=-1)).numpy()
    h, w = images.shape[1:3]
    out = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in cam])
    peak = out.reshape(len(out), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map in the jet colour map over the uint8 RGB image."""
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255))
