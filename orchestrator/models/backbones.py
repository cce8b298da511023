"""Backbone names and facts, importable without TensorFlow.

The registry that a trial config, a search space and the CLIs check names against. What needs
Keras (the constructor, `preprocess_input`, the classifier around it) lives in `classifier.py`, keyed
by the same names; `tests/test_models.py` checks the two key sets are equal.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError

# urlretrieve has no timeout of its own: on a cluster whose egress is black-holed it would hang
# forever instead of failing with the message that says where to put the file by hand.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0

_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """Facts about one convolutional base; `weights_*` are Keras's own no-top ImageNet file."""

    name: str
    weights_file: str | None
    weights_url: str | None
    weights_hash: str | None  # md5, as keras.applications passes it to get_file
    default_resolution: int = 224
    min_resolution: int = 32
    pretrainable: bool = True


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        # A from-scratch CNN (Conv-BN-ReLU-MaxPool blocks): the baseline every recipe compares to.
        Backbone(name="baseline_cnn", weights_file=None, weights_url=None, weights_hash=None,
                 pretrainable=False),
        Backbone(
            name="resnet50",
            weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=_KERAS_WEIGHTS
            + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_hash="4d473c1dd8becc155b73f8504c6f6626",
        ),
        Backbone(
            name="densenet121",
            weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=_KERAS_WEIGHTS
            + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_hash="30ee3e1110167f948a6b9946edeeb738",
        ),
        Backbone(
            name="efficientnetb0",
            weights_file="efficientnetb0_notop.h5",
            weights_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
            weights_hash="50bc09e76180e00e4465e1a485ddc09d",
        ),
        Backbone(
            name="mobilenetv3small",
            weights_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            weights_url=_KERAS_WEIGHTS
            + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            weights_hash="d3e8ec802a04aa4fc771ee12a9a9b836",
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}"
        ) from None
