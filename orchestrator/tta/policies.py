"""Test-time augmentation policies as data: named transforms, the registry, and the maths that
takes a policy's mean. Pure (no TensorFlow), so the ensemble's choice can import it.

A policy is a tuple of `NamedTransform`s. A task forbids some kinds of transform (a mirrored chest
X-ray puts the heart on the wrong side), so `policy_for_task` drops those. `predict.py` applies
the transforms as TensorFlow ops; a model is scored once under the union of every policy under
consideration (`union_of`), and each policy's mean is then taken with `policy_mean`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from orchestrator.errors import ConfigError
from tasks.base import TTA_KINDS


@dataclass(frozen=True)
class NamedTransform:
    """One deterministic test-time transform, applied as flips, then rotation, then brightness.

    angle: degrees, positive = counter-clockwise as displayed, about the image centre.
    brightness: relative and multiplicative (+0.15 = 15% brighter), clipped to 0..255, so a dark
    background stays dark instead of turning grey as an additive shift would make it.
    """

    name: str
    hflip: bool = False
    vflip: bool = False
    angle: float = 0.0
    brightness: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a TTA transform needs a name")
        if not math.isfinite(self.angle):
            raise ConfigError(f"TTA transform {self.name}: angle must be finite, got {self.angle}")
        if not (math.isfinite(self.brightness) and self.brightness > -1.0):
            raise ConfigError(
                f"TTA transform {self.name}: brightness must be > -1 (a factor > 0), "
                f"got {self.brightness}"
            )

    @property
    def kinds(self) -> tuple[str, ...]:
        """The `TTA_KINDS` this transform uses, in that order; () for identity."""
        used = {
            "hflip": self.hflip,
            "vflip": self.vflip,
            "rotate": self.angle != 0.0,
            "brightness": self.brightness != 0.0,
        }
        return tuple(k for k in TTA_KINDS if used[k])

    @property
    def is_identity(self) -> bool:
        return not self.kinds


def _transform(hflip: bool = False, vflip: bool = False, angle: float = 0.0,
               brightness: float = 0.0) -> NamedTransform:
    """A transform named after its parameters, so equal names mean equal transforms."""
    parts = ["hflip"] * hflip + ["vflip"] * vflip
    if angle:
        parts.append(f"rot{angle:+g}")
    if brightness:
        parts.append(f"bright{round(brightness * 100, 6):+g}")
    return NamedTransform("_".join(parts) or "identity", hflip, vflip, float(angle),
                          float(brightness))


IDENTITY = _transform()

POLICIES: dict[str, tuple[NamedTransform, ...]] = {
    "none": (IDENTITY,),
    # the brain MRI recipe's "standard TTA"
    "standard6": (
        IDENTITY,
        _transform(hflip=True),
        _transform(angle=5),
        _transform(angle=-5),
        _transform(brightness=0.10),
        _transform(brightness=-0.10),
    ),
    # The brain MRI recipe's 17-way set, in its order: 1 identity, 2 hflip, 3 vflip, 4-9
    # rotations +-5, +-10, +-15 degrees, 10-13 brightness +15%, -15%, +20%, -20%, and 14-17 four
    # combinations (our choice; the recipe does not list them): hflip+rot+5+bright+10,
    # hflip+rot-5+bright-10, vflip+rot+10+bright+15, vflip+rot-10+bright-15.
    "aggressive17": (
        IDENTITY,
        _transform(hflip=True),
        _transform(vflip=True),
        _transform(angle=5),
        _transform(angle=-5),
        _transform(angle=10),
        _transform(angle=-10),
        _transform(angle=15),
        _transform(angle=-15),
        _transform(brightness=0.15),
        _transform(brightness=-0.15),
        _transform(brightness=0.20),
        _transform(brightness=-0.20),
        _transform(hflip=True, angle=5, brightness=0.10),
        _transform(hflip=True, angle=-5, brightness=-0.10),
        _transform(vflip=True, angle=10, brightness=0.15),
        _transform(vflip=True, angle=-10, brightness=-0.15),
    ),
}


def get_policy(name: str) -> tuple[NamedTransform, ...]:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown TTA policy {name!r}; valid policies: {', '.join(POLICIES)}"
        ) from None


def policy_for_task(name: str, tta_kinds: Iterable[str]) -> tuple[NamedTransform, ...]:
    """The named policy minus every transform that uses a kind the task does not allow.

    Identity always stays. E.g. pneumonia (rotate, brightness) keeps 11 of aggressive17: identity,
    the 6 rotations and the 4 brightness changes; every flip, and so every combination, goes.
    """
    allowed = set(tta_kinds)
    unknown = allowed - set(TTA_KINDS)
    if unknown:
        raise ConfigError(f"unknown TTA kinds {sorted(unknown)}; valid: {TTA_KINDS}")
    return tuple(t for t in get_policy(name) if set(t.kinds) <= allowed)


def union_of(policies: Iterable[Sequence[NamedTransform]]) -> tuple[NamedTransform, ...]:
    """Distinct transforms (by name, first-seen order) across policies: score a model once under
    these, then take every policy's mean from the result with `policy_mean`."""
    seen: dict[str, NamedTransform] = {}
    for policy in policies:
        for t in policy:
            if seen.setdefault(t.name, t) != t:
                raise ConfigError(f"two different TTA transforms are both named {t.name!r}")
    return tuple(seen.values())


def policy_mean(per_transform: np.ndarray, transforms_in_order: Sequence[NamedTransform],
                policy: Sequence[NamedTransform]) -> np.ndarray:
    """(T, N, C) probabilities under `transforms_in_order` -> (N, C) mean over `policy`'s."""
    index = {t.name: i for i, t in enumerate(transforms_in_order)}
    if len(index) != len(per_transform):
        raise ValueError(
            f"{len(per_transform)} probability slices for {len(index)} distinct transforms"
        )
    missing = [t.name for t in policy if t.name not in index]
    if missing or not policy:
        raise ValueError(f"policy transforms {missing or '(none)'} were not scored")
    return np.asarray(per_transform)[[index[t.name] for t in policy]].mean(axis=0)
