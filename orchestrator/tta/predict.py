"""Test-time augmentation in TensorFlow: transforms as ops, one forward pass for all variants.

The transforms (`policies.py`) run inside the same `tf.function` as the model: only the N source
images travel to the device, and all T variants of a batch go through the model in a single call,
so TTA costs about T times plain inference instead of T times plain inference plus T host
round-trips per batch. Probabilities are returned per transform (T, N, C); `policies.policy_mean`
takes each policy's mean from them.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from orchestrator.errors import ConfigError
from orchestrator.tta.policies import NamedTransform

# Rotation fills the uncovered corners by reflection: black corners would be a feature the model
# never saw in training (training augmentation in pipeline.py reflects too).
_FILL_MODE = "REFLECT"
_INTERPOLATION = "BILINEAR"


# --- transforms as TensorFlow ops -----------------------------------------------------------------


def _rotation_matrix(degrees: float, height: int, width: int) -> tf.Tensor:
    """ImageProjectiveTransformV3's output->input map for a rotation about the image centre."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return tf.constant([[cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]], tf.float32)


def _apply_one(x: tf.Tensor, t: NamedTransform) -> tf.Tensor:
    """x: (N, H, W, 3) float32 with static H, W. Identity returns x itself."""
    if t.hflip:
        x = tf.reverse(x, axis=[2])
    if t.vflip:
        x = tf.reverse(x, axis=[1])
    if t.angle:
        height, width = x.shape[1], x.shape[2]
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=_rotation_matrix(t.angle, height, width),
            output_shape=tf.constant([height, width], tf.int32),
            fill_value=tf.constant(0.0, tf.float32),
            interpolation=_INTERPOLATION,
            fill_mode=_FILL_MODE,
        )
    if t.brightness:
        x = tf.clip_by_value(x * (1.0 + t.brightness), 0.0, 255.0)
    return x


def apply_transforms(images: tf.Tensor | np.ndarray,
                     transforms: Sequence[NamedTransform]) -> tf.Tensor:
    """(N, H, W, 3) pixels 0..255 -> (T*N, H, W, 3) float32, transform-major (all of the first
    transform's images, then the second's), in TensorFlow ops so it runs where the model runs."""
    if not transforms:
        raise ValueError("no TTA transforms given")
    x = tf.cast(images, tf.float32)
    if x.shape.rank != 4 or x.shape[1] is None or x.shape[2] is None:
        raise ValueError(f"images must be (N, H, W, C) with known H and W, got {x.shape}")
    return tf.concat([_apply_one(x, t) for t in transforms], axis=0)


# --- prediction -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Predictor:
    """Compiled functions for one (model, transforms, input dtype and shape), each traced once: the
    batch dimension is None in their signatures, so a short last pass does not retrace.

    `step` runs the model on the variants of pass k and makes the variants of pass k+1 in the same
    graph. The two do not depend on each other, so TensorFlow runs them concurrently: on CPU the
    transforms fill the cores the model leaves idle (17-way TTA of 256 images, MobileNetV3-Small
    at 96 px, 2 cores: 3.4-3.6 s -> 3.2-3.3 s), and the variants never leave the device.
    """

    make: Callable[[tf.Tensor], tf.Tensor]  # images -> variants
    step: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]  # -> (T, b, C), variants


def flat_outputs(outputs) -> tf.Tensor:
    """A model's output as one (N, D) float32 tensor. A multi-head model's dict keeps the order
    its heads were built in (the task's, through saving and loading too), so its columns match
    `orchestrator.models.heads.column_slices`; a regression head's (N, 1) is one column."""
    if not isinstance(outputs, dict):
        return tf.cast(outputs, tf.float32)
    parts = [tf.cast(v, tf.float32) for v in outputs.values()]
    return tf.concat([tf.reshape(v, (tf.shape(v)[0], -1)) for v in parts], axis=1)


def output_width(model: keras.Model) -> int:
    """Columns of `flat_outputs(model(x))`."""
    shapes = model.output_shape
    if isinstance(shapes, dict):
        shapes = list(shapes.values())
    if isinstance(shapes, list):  # one shape per output
        return sum(int(np.prod(s[1:])) for s in shapes)
    return int(shapes[-1])


# model -> {(transforms, dtype, shape): _Predictor}. Weak keys: a pool actor loads and drops one
# model after another, and a cached function must not keep a dropped model alive.
_PREDICTORS: "weakref.WeakKeyDictionary[keras.Model, dict[tuple, _Predictor]]" = (
    weakref.WeakKeyDictionary()
)


def _predictor(model: keras.Model, transforms: tuple[NamedTransform, ...], dtype: tf.DType,
               shape: tuple[int, ...]) -> _Predictor:
    per_model = _PREDICTORS.setdefault(model, {})
    key = (transforms, dtype.name, shape)
    if key not in per_model:
        model_ref = weakref.ref(model)  # the cache value must not hold its own key
        count = len(transforms)
        images_spec = tf.TensorSpec((None, *shape), dtype)
        variants_spec = tf.TensorSpec((None, *shape), tf.float32)

        @tf.function(input_signature=[images_spec])
        def make(images: tf.Tensor) -> tf.Tensor:
            return apply_transforms(images, transforms)

        @tf.function(input_signature=[variants_spec, images_spec])
        def step(variants: tf.Tensor, next_images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            probs = flat_outputs(model_ref()(variants, training=False))
            return (tf.reshape(probs, (count, -1, tf.shape(probs)[-1])),
                    apply_transforms(next_images, transforms))

        per_model[key] = _Predictor(make, step)
    return per_model[key]


def images_per_pass(batch_size: int, num_transforms: int) -> int:
    """Source images per forward pass: ceil(batch_size / T), so that one pass holds about
    `batch_size` model inputs (batch_size..batch_size+T-1), the memory plain inference needs.

    `batch_size` keeps its `model.predict` meaning (inputs per forward pass: what fits on the
    device). Sending T*batch_size inputs instead would make 17-way TTA need 17x the memory a caller
    sized for, and buys nothing that a larger batch_size would not buy plain inference as well;
    see docs/benchmarks.md, "Test-time augmentation". Rounded up, not down: 32 // 17 would be one
    image, 17 inputs, a pass too small to keep the device busy (29% fewer images/s on 2 CPU cores).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return max(1, -(-batch_size // num_transforms))


def tta_predict_each(model: keras.Model, images: np.ndarray,
                     transforms: Sequence[NamedTransform], batch_size: int = 32) -> np.ndarray:
    """(N, H, W, 3) uint8 or float pixels 0..255 -> (T, N, C) float32 probabilities per transform.

    Each pass sends `images_per_pass` source images to the device (uint8 stays uint8: a quarter of
    the bytes), where their T variants are made and go through the model in one call. Results stay
    on the device until the end, one copy back, so a GPU does not wait for a copy between passes.
    """
    transforms = tuple(transforms)
    if not transforms:
        raise ValueError("no TTA transforms given")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.dtype not in (np.uint8, np.float32):
        images = images.astype(np.float32)
    per_pass = images_per_pass(batch_size, len(transforms))
    if len(images) == 0:
        return np.zeros((len(transforms), 0, output_width(model)), np.float32)
    predictor = _predictor(model, transforms, tf.as_dtype(images.dtype), images.shape[1:])
    variants = predictor.make(tf.constant(images[:per_pass]))
    parts = []
    for start in range(per_pass, len(images), per_pass):
        probs, variants = predictor.step(variants, tf.constant(images[start:start + per_pass]))
        parts.append(probs)
    probs, _ = predictor.step(variants, tf.constant(images[:0]))  # the last pass, nothing next
    parts.append(probs)
    return tf.concat(parts, axis=1).numpy()


def tta_predict(model: keras.Model, images: np.ndarray, transforms: Sequence[NamedTransform],
                batch_size: int = 32) -> np.ndarray:
    """(N, C) probabilities: the mean over `transforms` of `tta_predict_each`."""
    return tta_predict_each(model, images, transforms, batch_size).mean(axis=0)
