"""What a sweep may spend, as one frozen record: built once from the profile and the CLI's
overrides, recorded in the sweep's MLflow params and its state file, and read back whole by
`--resume` (never re-listed field by field)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from search_spaces import Profile, with_overrides

OVERRIDABLE = ("num_samples", "max_epochs", "cpus_per_trial", "gpus_per_trial", "cv_folds",
               "cv_top", "replicates", "workers_per_trial")  # the CLI flags of the same names


@dataclass(frozen=True)
class Budget:
    """Tune's draws (`num_samples`, x the space's grid), each trial's epochs (ASHA's max_t,
    `grace_period` its first rung) and resources, and the cross-validation stage's size:
    `cv_top` finalists x `replicates` seeds x `cv_folds` folds (0 folds: the holdout only)."""

    num_samples: int
    max_epochs: int
    grace_period: int
    cpus_per_trial: float
    gpus_per_trial: float
    cv_folds: int = 0
    cv_top: int = 0
    replicates: int = 1
    workers_per_trial: int = 1  # data-parallel workers sharing each trial's resources

    @classmethod
    def of(cls, profile: Profile, overrides: Mapping[str, Any] | None = None) -> "Budget":
        """The profile's budget with the CLI's `overrides` (None values keep the profile's;
        `search_spaces.with_overrides` checks them and lowers ASHA's grace period with a lower
        `max_epochs`)."""
        unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown budget override(s) {unknown}; valid: {OVERRIDABLE}")
        overrides = dict(overrides or {})
        workers = overrides.pop("workers_per_trial", None)
        workers = 1 if workers is None else int(workers)
        if workers < 1:
            raise ValueError(f"--workers-per-trial {workers}: must be 1 or more")
        spent = with_overrides(profile, **overrides)
        return cls.from_dict({**{f.name: getattr(spent, f.name) for f in fields(cls)
                                 if hasattr(spent, f.name)}, "workers_per_trial": workers})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Budget":
        kinds = {f.name: (float if f.type in ("float", float) else int) for f in fields(cls)}
        return cls(**{k: kinds[k](v) for k, v in values.items() if k in kinds})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def applied(self, profile: Profile) -> Profile:
        """`profile` spending this budget: its fields, and the space's `epochs` = max_epochs."""
        spent = {k: v for k, v in self.to_dict().items() if k != "workers_per_trial"}
        return dataclasses.replace(profile, **spent,
                                   space={**profile.space, "epochs": self.max_epochs})
