"""The Keras side of the unfreezing schedules (`train.schedules`): which layers train in
a phase, the phase's optimizer, and the learning rate a step will use."""
from __future__ import annotations

import keras

from orchestrator.errors import ConfigError
from orchestrator.models.classifier import model_backbone
from orchestrator.train.schedules import COSINE_ALPHA, Phase, unfrozen_count


def set_trainable(
    model: keras.Model, fraction: float, *, train_batchnorm: bool = False
) -> tuple[int, int]:
    """Unfreeze the top ceil(fraction x n) layers of `model.get_layer("backbone")`; returns
    (trainable backbone layers, n), n excluding the InputLayer.

    BatchNormalization layers stay frozen unless `train_batchnorm` (Keras 3 runs a non-trainable
    BN in inference mode, so small fine-tuning batches cannot wreck ImageNet statistics). The head
    is always trainable. A backbone that is not `pretrainable` (baseline CNN) is made fully
    trainable, BN included, whatever `fraction` says: freezing random features is pointless.
    Compile the model (again) afterwards: Keras fixes the trainable set when it compiles.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"trainable fraction must be in [0, 1], got {fraction}")
    base = model.get_layer("backbone")
    base_layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    # Every flag is set explicitly: on the TF backend `x.trainable = True` is a no-op when x is
    # already trainable (KerasAutoTrackable.__setattr__ short-circuits an unchanged value), so it
    # does not reach sublayers that an earlier call froze.
    for layer in (model, *model.layers):
        layer.trainable = True
    pretrainable = model_backbone(model).pretrainable
    first_unfrozen = len(base_layers) - unfrozen_count(fraction, len(base_layers))
    for i, layer in enumerate(base_layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        unfrozen = i >= first_unfrozen and (train_batchnorm or not is_bn)
        layer.trainable = unfrozen or not pretrainable
    return sum(layer.trainable for layer in base_layers), len(base_layers)


def make_optimizer(
    phase: Phase, steps_per_epoch: int, phase_epochs: int
) -> keras.optimizers.Optimizer:
    """Adam at the phase's LR; a cosine phase decays to COSINE_ALPHA x LR over its own steps."""
    if steps_per_epoch < 1 or phase_epochs < 1:
        raise ConfigError(
            f"steps_per_epoch and phase_epochs must be >= 1, got {steps_per_epoch}, {phase_epochs}"
        )
    lr: float | keras.optimizers.schedules.LearningRateSchedule = phase.learning_rate
    if phase.decay == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=phase.learning_rate,
            decay_steps=steps_per_epoch * phase_epochs,
            alpha=COSINE_ALPHA,
        )
    return keras.optimizers.Adam(learning_rate=lr)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The LR the next step will use (a schedule is evaluated at the optimizer's iteration);
    works on the LossScaleOptimizer that compile wraps around it under mixed precision."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
