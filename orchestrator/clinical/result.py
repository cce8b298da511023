"""What the clinical evaluation returns (`evaluate.evaluate`, and `multihead.evaluate_multihead`
for a multi-head ensemble): the files to log, the flat metrics, the intervals and what was
fitted on held-out predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.clinical.operating_point import OperatingPoint
from orchestrator.clinical.referral import Referral


@dataclass(frozen=True)
class HeadFit:
    """What was fitted for one head of a multi-head ensemble, on that head's held-out
    predictions only: a classification head's temperature and refer cut; nothing for a
    regression head (both None)."""

    name: str
    temperature: float | None
    referral: Referral | None


@dataclass
class ClinicalResult:
    files: list[Path]
    metrics: dict[str, float]  # flat, for MLflow
    intervals: pd.DataFrame  # model, metric, point, low, high, resamples, groups, note
    temperature: float  # NaN for a multi-head ensemble: each head has its own (`heads`)
    operating_point: OperatingPoint | None
    referral: Referral | None  # None for a multi-head ensemble: each head has its own
    test_calibrated: np.ndarray  # (N, C): the served probabilities of the test split; (N, D)
    notes: list[str] = field(default_factory=list)
    heads: dict[str, HeadFit] = field(default_factory=dict)  # a multi-head ensemble's, in order
    # Why some test figures have no interval (`bootstrap.note_lines`), once each; the paired
    # difference's too. Empty when every interval is sound.
    interval_notes: list[str] = field(default_factory=list)
