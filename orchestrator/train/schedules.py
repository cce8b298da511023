"""Unfreezing schedules as data: phases of (share of epochs, share of backbone trainable, LR).

A trial's `lr_multiplier` rescales every phase's learning rate (`scale_schedule`), so Tune can
search the learning rate while a schedule keeps its shape. Pure data, importable without
TensorFlow; `train/phases.py` applies a phase to a Keras model.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

from orchestrator.errors import ConfigError

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
            "the chest X-ray recipe: head on a frozen backbone at 1e-3, then the top 43% of the "
            "backbone at 1e-5 (ResNet50's layers 100+)",
        ),
        Schedule(
            "three_phase",
            (Phase(_THIRD, 0.0, 1e-3), Phase(_THIRD, 0.2, 1e-4), Phase(_THIRD, 1.0, 1e-4)),
            "the brain MRI recipe: frozen backbone at 1e-3, top 20% at 1e-4, everything at 1e-4",
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


def unfrozen_count(fraction: float, n_layers: int) -> int:
    """ceil(fraction x n_layers), immune to float noise (0.07 x 100 is 7.000000000000001)."""
    return math.ceil(round(fraction * n_layers, 9))
