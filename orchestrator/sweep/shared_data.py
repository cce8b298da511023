"""The sweep's decoded arrays in Ray's object store, once: what every trial process and every
data-parallel worker of a stage reads.

The driver puts them there itself and hands Tune only this small reference: `ray.get` maps
numpy arrays from the node's object store without copying them, so a trial's extra workers
(`parallel.py`) read the same copy as the trial's own process instead of a second one put
there for them (gigabytes at 384 px on a full HAM10000).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import ray

from orchestrator.train.artifacts import FoldedData, TrialData
from orchestrator.train.config import TrialConfig


@dataclass(frozen=True)
class SharedData:
    """{resolution: TrialData} for the search, {resolution: FoldedData} for cross-validation."""

    ref: Any  # ray.ObjectRef of the whole mapping; Tune pickles this object, not the arrays

    @classmethod
    def put(cls, by_resolution: Mapping[int, TrialData | FoldedData]) -> "SharedData":
        return cls(ray.put(dict(by_resolution)))

    def trial_data(self, cfg: TrialConfig) -> TrialData:
        """One trial's arrays at its resolution: the search's as they are; a cross-validation
        trial's the other folds to train on and `cfg.cv_fold` to predict (`FoldedData` copies
        only that part)."""
        found = ray.get(self.ref)[cfg.resolution]
        return found.trial_data(cfg.cv_fold) if isinstance(found, FoldedData) else found
