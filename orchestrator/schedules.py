"""Unfreezing schedules as data: phases of (share of epochs, share of backbone trainable, LR).

A trial's `lr_multiplier` rescales every phase's learning rate (`scale_schedule`), so Tune can
search the learning rate while a schedule keeps its shape.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import keras

from orchestrator.errors import ConfigError
from orchestrator.models import model_backbone

DECAYS = ("constant", "cosine")
COSINE_ALPHA = 0.1  # cosine phases end at 10% of their starting learning rate


@dataclass(frozen=True)
class Phase:
    """`epochs`: this phase's share of the trial's epochs; `trainable_fraction`: top share of the
    backbone's layers that train (0: head only)."""

    epochs: float
    trainable_fraction: float
    learning_rate: float
    decay: str = "constant"

    def __post_init__(self) -> None:
        if not 0.0 < self.epochs <= 1.0:
            raise ConfigError(f"phase epochs share must be in (0, 1], got {self.epochs}")
        if not 0.0 <= self.trainable_fraction <= 1.0:
            raise ConfigError(
                f"trainable_fraction must be in [0, 1], got {self.trainable_fraction}"
            )
        if not self.learning_rate > 0.0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.decay not in DECAYS:
            raise ConfigError(f"decay {self.decay!r} is not one of {DECAYS}")


@dataclass(frozen=True)
class Schedule:
    name: str
    phases: tuple[Phase, ...]
    description: str

    def __post_init__(self) -> None:
        if not self.phases:
            raise ConfigError(f"schedule {self.name}: no phases")
        total = sum(p.epochs for p in self.phases)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ConfigError(f"schedule {self.name}: phase epoch shares sum to {total}, not 1")


@dataclass(frozen=True)
class PlannedPhase:
    """A phase placed on the epoch axis: it runs epochs [start_epoch, end_epoch)."""

    phase: Phase
    start_epoch: int
    end_epoch: int

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch


_THIRD = 1.0 / 3.0
SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule(
            "two_phase",
            (Phase(0.5, 0.0, 1e-3), Phase(0.5, 0.43, 1e-5)),
            "seed 004: head on a frozen backbone at 1e-3, then the top 43% of the backbone at "
            "1e-5 (ResNet50's layers 100+)",
        ),
        Schedule(
            "three_phase",
            (Phase(_THIRD, 0.0, 1e-3), Phase(_THIRD, 0.2, 1e-4), Phase(_THIRD, 1.0, 1e-4)),
            "seed 000: frozen backbone at 1e-3, top 20% at 1e-4, everything at 1e-4",
        ),
        Schedule(
            "three_phase_continued",
            (
                Phase(0.25, 0.0, 1e-3),
                Phase(0.25, 0.2, 1e-4),
                Phase(0.25, 1.0, 1e-4),
                Phase(0.25, 1.0, 1e-5),
            ),
            "three_phase, then everything again at 1e-5",
        ),
        Schedule(
            "full",
            (Phase(1.0, 1.0, 1e-4, "cosine"),),
            "everything trainable from the start, 1e-4 cosine-decayed to 1e-5",
        ),
    )
}


def get_schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(
            f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}"
        ) from None


def scale_schedule(schedule: Schedule, lr_multiplier: float) -> Schedule:
    """The same schedule with every phase's learning rate multiplied (Tune searches the LR)."""
    if not lr_multiplier > 0.0:
        raise ConfigError(f"lr_multiplier must be > 0, got {lr_multiplier}")
    phases = tuple(
        replace(p, learning_rate=p.learning_rate * lr_multiplier) for p in schedule.phases
    )
    return replace(schedule, phases=phases)


def plan_epochs(schedule: Schedule, total_epochs: int) -> list[PlannedPhase]:
    """Split `total_epochs` by the phases' shares (largest remainder, each phase >= 1 epoch).

    With fewer epochs than phases the first `total_epochs` phases get one epoch each and the
    later (fine-tuning) phases are dropped, with a warning.
    """
    if total_epochs < 1:
        raise ConfigError(f"total_epochs must be >= 1, got {total_epochs}")
    phases = schedule.phases
    if total_epochs < len(phases):
        warnings.warn(
            f"schedule {schedule.name}: {total_epochs} epoch(s) for {len(phases)} phases; "
            f"running only the first {total_epochs} phase(s), one epoch each, and dropping "
            f"phase(s) {list(range(total_epochs + 1, len(phases) + 1))}",
            stacklevel=2,
        )
        return _place(phases[:total_epochs], [1] * total_epochs)
    return _place(phases, _allocate([p.epochs for p in phases], total_epochs))


def _allocate(shares: list[float], total: int) -> list[int]:
    """Largest-remainder rounding, then each empty phase takes an epoch from the largest one."""
    quotas = [s * total for s in shares]
    counts = [math.floor(q + 1e-9) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] = 1
    return counts


def _place(phases: tuple[Phase, ...], counts: list[int]) -> list[PlannedPhase]:
    planned, start = [], 0
    for phase, count in zip(phases, counts):
        planned.append(PlannedPhase(phase, start, start + count))
        start += count
    return planned


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


def unfrozen_count(fraction: float, n_layers: int) -> int:
    """ceil(fraction x n_layers), immune to float noise (0.07 x 100 is 7.000000000000001)."""
    return math.ceil(round(fraction * n_layers, 9))


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
