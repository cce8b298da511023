"""The Keras side of the backbones, the classifier every trial trains, where weights come from.

Every model takes float32 RGB pixels in 0..255 and does its backbone's preprocessing itself (the
`BackbonePreprocess` layer), so a saved `.keras` model carries its preprocessing and serving cannot
diverge from training. Every model ends in float32 softmax over C classes (binary too), so every
later stage works on (N, C) probabilities.
"""
from __future__ import annotations

import os
import socket
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping

import keras
from keras import layers

from orchestrator.models.backbones import (BACKBONES, DOWNLOAD_SOCKET_TIMEOUT_S, Backbone,
                                           get_backbone)
from orchestrator.errors import ConfigError, WeightsUnavailable
from orchestrator.models.frequency import frequency_features
from orchestrator.models.heads import TargetScale
from tasks.base import Head

WEIGHT_CHOICES = ("none", "imagenet")
WEIGHTS_DIR_ENV = "MEDSWEEP_WEIGHTS_DIR"
OFFLINE_ENV = "MEDSWEEP_OFFLINE"
# keras.applications.efficientnet.IMAGENET_STDDEV_RGB (see _efficientnet_b0).
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

Constructor = Callable[[tuple[int, int, int], "str | None"], keras.Model]
Preprocess = Callable[[object], object]


@dataclass(frozen=True)
class KerasBackbone:
    """The Keras side of a registered backbone (`backbones`), under the same name."""

    constructor: Constructor  # (input_shape, weights path or None) -> base model named "backbone"
    preprocess: Preprocess  # 0..255 RGB -> what the base expects; runs inside the model


# --- preprocessing (the functions BackbonePreprocess calls) -------------------------------------


def _identity(x):
    """EfficientNet and MobileNetV3 rescale inside the Keras model (include_preprocessing)."""
    return x


def _unit_range(x):
    """The baseline CNN trains from scratch on 0..1 pixels."""
    return x / 255.0


# --- constructors ---------------------------------------------------------------------------------


def _keras_application(factory: Callable[..., keras.Model], **kwargs) -> Constructor:
    """Build with weights=None, then load_weights(path): the same path works on air-gapped hosts."""

    def construct(input_shape: tuple[int, int, int], weights_path: str | None) -> keras.Model:
        base = factory(
            include_top=False, weights=None, input_shape=input_shape, name="backbone", **kwargs
        )
        if weights_path is not None:
            _load_weights(base, weights_path)
        return base

    return construct


def _efficientnet_b0(input_shape: tuple[int, int, int], weights_path: str | None) -> keras.Model:
    """EfficientNetB0 whose normalisation matches `EfficientNetB0(weights="imagenet")`.

    Keras inserts an extra Rescaling(1/sqrt(stddev)) after the Normalization layer only when
    weights == "imagenet" (tensorflow issue 49930: the file stores stddev as variance); building
    with weights=None and loading a path silently skips it. Folding the same factor into the
    loaded variance gives the identical function without that layer.
    """
    base = _keras_application(keras.applications.EfficientNetB0)(input_shape, weights_path)
    if weights_path is not None:
        norm = next(layer for layer in base.layers if isinstance(layer, layers.Normalization))
        stddev = keras.ops.convert_to_tensor(_IMAGENET_STDDEV_RGB)
        norm.adapt_variance.assign(norm.adapt_variance * stddev)
        norm.finalize_state()  # the layer computes with a snapshot of its variables
    return base


def _baseline_cnn(input_shape: tuple[int, int, int], weights_path: str | None) -> keras.Model:
    """The from-scratch baseline: Conv-BN-ReLU-MaxPool blocks, 32 -> 256 filters."""
    if weights_path is not None:
        raise ConfigError("baseline_cnn has no pretrained weights; use weights='none'")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, filters in enumerate((32, 64, 128, 256), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        # momentum 0.9: moving statistics settle within the few hundred steps of a small set
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="backbone")


def _load_weights(base: keras.Model, path: str) -> None:
    try:
        base.load_weights(path)
    except Exception as e:  # wrong file, truncated download, other architecture
        raise WeightsUnavailable(f"could not load weights {path} into {base.name}: {e}") from e


KERAS_BACKBONES: dict[str, KerasBackbone] = {
    "baseline_cnn": KerasBackbone(_baseline_cnn, _unit_range),
    # caffe mode: BGR, mean-centred
    "resnet50": KerasBackbone(_keras_application(keras.applications.ResNet50),
                              keras.applications.resnet50.preprocess_input),
    # torch mode: 0..1, then mean/std
    "densenet121": KerasBackbone(_keras_application(keras.applications.DenseNet121),
                                 keras.applications.densenet.preprocess_input),
    "efficientnetb0": KerasBackbone(_efficientnet_b0, _identity),
    "mobilenetv3small": KerasBackbone(
        _keras_application(keras.applications.MobileNetV3Small, minimalistic=False,
                           include_preprocessing=True),
        _identity),
}
if set(KERAS_BACKBONES) != set(BACKBONES):  # one name, two records: never let them drift
    raise RuntimeError(f"orchestrator.models.classifier: Keras backbones "
                       f"{sorted(KERAS_BACKBONES)} differ "
                       f"from the registry {sorted(BACKBONES)}")


def keras_backbone(backbone: Backbone | str) -> KerasBackbone:
    """The constructor and preprocessing of a registered backbone (unknown name: ConfigError)."""
    name = backbone if isinstance(backbone, str) else backbone.name
    return KERAS_BACKBONES[get_backbone(name).name]


# --- the preprocessing layer ----------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="medsweep")
class BackbonePreprocess(layers.Layer):
    """Applies a registered backbone's preprocess_input inside the model (always in float32).

    Float32 even under mixed precision: caffe-mode mean subtraction on 0..255 values loses
    precision in float16; the base casts to its own compute dtype right after.
    """

    def __init__(self, backbone_name: str, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        get_backbone(backbone_name)  # fail at construction, not on the first batch
        self.backbone_name = backbone_name

    def call(self, inputs):
        return keras_backbone(self.backbone_name).preprocess(keras.ops.cast(inputs, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone_name": self.backbone_name}


def model_backbone(model: keras.Model) -> Backbone:
    """The Backbone a `build_model` model (or one loaded back from `.keras`) was built on."""
    for layer in model.layers:
        if isinstance(layer, BackbonePreprocess):
            return get_backbone(layer.backbone_name)
    raise ValueError(f"model {model.name} has no BackbonePreprocess layer; not from build_model")


# --- the classifier -------------------------------------------------------------------------------


def build_model(
    backbone: Backbone | str,
    num_classes: int,
    resolution: int,
    weights: str = "none",
    weights_dir: str | os.PathLike | None = None,
    dropout: float = 0.5,
    head_units: int = 512,
    *,
    heads: tuple[Head, ...] = (),
    target_scales: Mapping[str, TargetScale] | None = None,
    frequency_stream: bool = False,
) -> keras.Model:
    """pixels 0..255 -> preprocess -> "backbone" -> GAP [+ frequency stream] -> Dense/ReLU ->
    Dropout -> softmax over `num_classes`; with `heads`, one named output per head instead (a
    Keras dict output): softmax for a classification head, for a regression head a linear
    value rescaled from standardised units to the head's unit (`target_scales`, from the
    training split), so the saved model answers in that unit.

    Every output layer is float32 even under mixed precision.
    """
    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if not heads and num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (binary is 2-way softmax), got {num_classes}")
    if resolution < bb.min_resolution:
        raise ConfigError(
            f"{bb.name} needs resolution >= {bb.min_resolution}, got {resolution}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    shape = (resolution, resolution, 3)
    base = keras_backbone(bb).constructor(shape, resolve_weights(bb, weights, weights_dir))

    inputs = keras.Input(shape=shape, dtype="float32", name="pixels")
    x = BackbonePreprocess(bb.name, name="preprocess")(inputs)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if frequency_stream:
        x = layers.Concatenate(name="fused_features")([x, frequency_features(inputs)])
    x = layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    if heads:
        outputs = _head_outputs(x, heads, target_scales or {})
    else:
        x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
        outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"medsweep_{bb.name}")


def head_inputs(model: keras.Model, features, images):
    """What `head_dense` reads, from the backbone's feature map: its pooled features, fused
    with the frequency stream's (computed from `images`, in inference mode) when the model has
    one. For code that runs the head by hand (Grad-CAM, MC dropout)."""
    pooled = model.get_layer("pool")(features)
    if not any(layer.name == "fused_features" for layer in model.layers):
        return pooled
    if model not in _STREAMS:  # built once per model, not per batch
        _STREAMS[model] = keras.Model(model.inputs, model.get_layer("frequency_dropout").output)
    return model.get_layer("fused_features")([pooled, _STREAMS[model](images, training=False)])


# model -> its frequency stream as a model of its own (weak keys: a dropped model is freed)
_STREAMS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def _head_outputs(features, heads: tuple[Head, ...],
                  scales: Mapping[str, TargetScale]) -> dict:
    outputs = {}
    for head in heads:
        if head.is_classification:
            z = layers.Dense(len(head.classes), dtype="float32", name=f"{head.name}_logits")(
                features)
            outputs[head.name] = layers.Activation("softmax", dtype="float32", name=head.name)(z)
            continue
        if head.name not in scales:
            raise ConfigError(f"regression head {head.name}: no target scale given")
        scale = scales[head.name]
        z = layers.Dense(1, dtype="float32", name=f"{head.name}_standardised")(features)
        outputs[head.name] = layers.Rescaling(scale.std, offset=scale.mean, dtype="float32",
                                              name=head.name)(z)
    return outputs


# --- weights --------------------------------------------------------------------------------------


def keras_cache_dir() -> str:
    """Where `keras.utils.get_file(..., cache_subdir="models")` puts files, by Keras's own rule.

    $KERAS_HOME, else ~/.keras (/tmp/.keras if home is not writable); get_file then falls back to
    /tmp/.keras if that directory is not writable. Read at call time, unlike Keras (import time).
    """
    base = os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return base


def resolve_weights(
    backbone: Backbone | str, weights: str, weights_dir: str | os.PathLike | None = None
) -> str | None:
    """A local path to the backbone's ImageNet no-top file (None for weights="none").

    Order: `weights_dir` (else $MEDSWEEP_WEIGHTS_DIR; when set, the file must be there), then the
    Keras cache, then a download unless MEDSWEEP_OFFLINE=1. Every failure names the file, the URL
    and where to put the file by hand.
    """
    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if weights == "none":
        return None
    if not bb.pretrainable or bb.weights_file is None:
        raise ConfigError(f"{bb.name} has no pretrained weights; use weights='none'")

    chosen_dir = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV) or None
    if chosen_dir is not None:
        return _from_weights_dir(bb, os.fspath(chosen_dir), from_env=weights_dir is None)

    cache_root = keras_cache_dir()
    cached = os.path.join(cache_root, "models", bb.weights_file)
    if os.path.isfile(cached):
        return cached
    if os.environ.get(OFFLINE_ENV) == "1":
        raise WeightsUnavailable(_by_hand(bb, cache_root, f"{OFFLINE_ENV}=1 forbids downloading"))
    return _download(bb, cache_root)


def _from_weights_dir(bb: Backbone, directory: str, *, from_env: bool) -> str:
    path = os.path.join(directory, bb.weights_file)
    if os.path.isfile(path):
        return path
    source = f"${WEIGHTS_DIR_ENV}" if from_env else "--weights-dir"
    state = "is not in" if os.path.isdir(directory) else "cannot be found: no directory"
    raise WeightsUnavailable(
        f"{bb.name} ImageNet weights: {bb.weights_file} {state} {directory} (from {source}). "
        f"On a machine with internet, download {bb.weights_url} (or run python -c \"import keras; "
        f"keras.utils.get_file('{bb.weights_file}', '{bb.weights_url}', cache_subdir='models')\") "
        f"and copy the file into {directory}."
    )


def _download(bb: Backbone, cache_root: str) -> str:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return keras.utils.get_file(
            bb.weights_file,
            bb.weights_url,
            cache_subdir="models",
            cache_dir=cache_root,
            file_hash=bb.weights_hash,
        )
    except Exception as e:  # URL failure, timeout, hash mismatch, disk full
        raise WeightsUnavailable(_by_hand(bb, cache_root, f"downloading it failed ({e})")) from e
    finally:
        socket.setdefaulttimeout(previous)


def _by_hand(bb: Backbone, cache_root: str, reason: str) -> str:
    return (
        f"{bb.name} ImageNet weights: {bb.weights_file} is not in the Keras cache "
        f"{os.path.join(cache_root, 'models')} and {reason}. Fetch {bb.weights_url} and put it "
        f"either in that cache directory or in a weights directory passed as --weights-dir "
        f"or ${WEIGHTS_DIR_ENV}."
    )

