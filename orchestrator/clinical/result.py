"""What the clinical evaluation returns (`evaluate.evaluate`): the files to log, the flat
metrics, the intervals and what was fitted on held-out predictions, head by head."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.clinical.conformal import SetFit
from orchestrator.clinical.operating_point import OperatingPoint
from orchestrator.clinical.patients import RuleChoice
from orchestrator.clinical.referral import Referral


@dataclass(frozen=True)
class HeadFit:
    """What was fitted for one head, on that head's held-out predictions only: a classification
    head's temperature, refer cut and (binary single-label) operating point; nothing for a
    regression head (all None)."""

    name: str
    temperature: float | None
    referral: Referral | None
    operating_point: OperatingPoint | None = None
    sets: SetFit | None = None  # a classification head's prediction-set quantile(s)
    grouping: RuleChoice | None = None  # how its images combine per patient (held-out groups)

    @property
    def group_rule(self) -> str | None:
        """The per-patient rule the served spec records: None when no held-out group held
        several images, so nothing backs a choice."""
        return self.grouping.rule if self.grouping and self.grouping.evidence else None


@dataclass
class ClinicalResult:
    files: list[Path]
    metrics: dict[str, float]  # flat, for MLflow
    intervals: pd.DataFrame  # model, metric, point, low, high, resamples, groups, note
    test_calibrated: np.ndarray  # (N, D): the served probabilities (and values) of the test split
    # A single-label task's one head: its answer is the task's own (None with several heads).
    answer: HeadFit | None = None
    heads: dict[str, HeadFit] = field(default_factory=dict)  # a multi-head ensemble's, in order
    notes: list[str] = field(default_factory=list)
    # Why some test figures have no interval (`bootstrap.note_lines`), once each; the paired
    # difference's too. Empty when every interval is sound.
    interval_notes: list[str] = field(default_factory=list)
    patient_line: str = ""  # the per-patient figures in one console line ("" : none to show)
    subgroup_line: str = ""  # the per-subgroup figures in one console line ("": none asked)

    @property
    def fits(self) -> dict[str, HeadFit]:
        """Every head's fit by name (a single-label task's one head: `tasks.base.SINGLE_HEAD`)."""
        return {**({self.answer.name: self.answer} if self.answer else {}), **self.heads}

    @property
    def temperature(self) -> float:
        """NaN for a multi-head ensemble: each head has its own (`heads`)."""
        return self.answer.temperature if self.answer else float("nan")

    @property
    def operating_point(self) -> OperatingPoint | None:
        return self.answer.operating_point if self.answer else None

    @property
    def referral(self) -> Referral | None:
        """None for a multi-head ensemble: each head has its own."""
        return self.answer.referral if self.answer else None
