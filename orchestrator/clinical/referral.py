"""The served decision and when to refer a case to a person: pure functions on calibrated
probabilities, shared by the clinical report, the pre-registration check and the served model.

- decision: binary tasks are positive when the calibrated positive probability reaches the
  validated threshold; multi-class tasks take the most probable class.
- confidence: the calibrated probability of the decided class, i.e. how likely the model says its
  own decision is right.
- refer: confidence below a cut. The cut is the lowest of `CANDIDATE_CUTS` (fixed before any
  data is seen) whose accepted held-out cases have a one-sided Clopper-Pearson lower bound on
  their accuracy at or above the target, each cut tested at level alpha / len(CANDIDATE_CUTS).
  By the union bound every accepted cut's bound holds at once with probability >= 1 - alpha, so
  searching over the cuts keeps the guarantee: with that probability the accepted cases'
  accuracy (in the population the held-out cases were drawn from) reaches the target. When no
  cut's bound does, every case is referred: a handful of lucky cases never backs a cut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

DEFAULT_TARGET_ACCURACY = 0.95
DEFAULT_REFER_CONFIDENCE = 0.95  # the level of the simultaneous lower bound
REFER_ALL = 2.0  # a cut above any probability: no cut reached the target, every case is referred
# Denser near 1, where a well-calibrated model's accurate cases are; 0.0 accepts every case.
CANDIDATE_CUTS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97,
                  0.975, 0.98, 0.985, 0.99, 0.9925, 0.995, 0.9975, 0.999, 0.9995, 0.9999)


@dataclass(frozen=True)
class Referral:
    cut: float  # refer when confidence < cut
    target_accuracy: float
    coverage: float  # share of the held-out cases accepted at the cut
    accuracy: float  # accuracy of those accepted cases (nan when none is)
    cases: int  # held-out cases it was chosen on
    confidence_level: float = DEFAULT_REFER_CONFIDENCE  # of the simultaneous lower bound
    lower_bound: float = float("nan")  # on the accepted cases' accuracy (nan: every case referred)

    @property
    def refers_everything(self) -> bool:
        return self.cut > 1.0

    def unreachable(self, held: str = "held-out") -> str:
        """The plain line said wherever a refer-everything rule is reported."""
        return (f"no confidence level supports accuracy {self.target_accuracy} on these "
                f"{self.cases} {held} cases (a perfect record needs at least "
                f"{cases_needed(self.target_accuracy, self.confidence_level)} accepted cases); "
                "every case would be referred: lower the target or add data")

    def supported(self, held: str = "held-out") -> str:
        """The chosen cut with what backs it, in words."""
        return (f"confidence < {self.cut:.4f} is referred: {self.coverage:.1%} of {self.cases} "
                f"{held} cases accepted at accuracy {self.accuracy:.3f}, "
                f"{self.confidence_level:.0%} lower bound {self.lower_bound:.3f} >= target "
                f"{self.target_accuracy}")


def accuracy_lower_bound(correct: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound: P(bound <= true accuracy) >= 1 - alpha."""
    if n == 0 or correct == 0:
        return 0.0
    return float(beta.ppf(alpha, correct, n - correct + 1))


def cases_needed(target_accuracy: float, confidence_level: float = DEFAULT_REFER_CONFIDENCE,
                 ) -> int:
    """The fewest accepted cases, all right, whose bound reaches the target: no held-out set
    smaller than this can support any cut (120 at accuracy 0.95 and level 0.95)."""
    if target_accuracy >= 1.0:
        return math.inf  # type: ignore[return-value]  (no finite record bounds accuracy 1)
    alpha = (1 - confidence_level) / len(CANDIDATE_CUTS)
    return math.ceil(math.log(alpha) / math.log(target_accuracy) - 1e-9)


def decide(calibrated: np.ndarray, threshold: float | None,
           positive_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(decided class index, confidence) per case; `threshold` None: argmax."""
    p = np.asarray(calibrated, dtype=np.float64)
    if threshold is None:
        decision = p.argmax(axis=1)
    else:
        if p.shape[1] != 2 or positive_index is None:
            raise ValueError("a threshold needs two classes and a positive class")
        negative = 1 - positive_index
        decision = np.where(p[:, positive_index] >= threshold, positive_index, negative)
    return decision, p[np.arange(len(p)), decision]


def accepted(confidence: np.ndarray, cut: float) -> np.ndarray:
    """The cases that are not referred."""
    return np.asarray(confidence) >= cut


def choose_refer_cut(y: np.ndarray, decision: np.ndarray, confidence: np.ndarray,
                     target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                     confidence_level: float = DEFAULT_REFER_CONFIDENCE) -> Referral:
    """The lowest candidate cut (most cases accepted) whose accepted cases' accuracy has a
    simultaneous lower bound at `confidence_level` at or above `target_accuracy`; `REFER_ALL`
    when none has."""
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    if not 0.5 <= confidence_level < 1.0:
        raise ValueError(f"refer confidence must be in [0.5, 1), got {confidence_level}")
    y, decision = np.asarray(y), np.asarray(decision)
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("no held-out cases to choose a refer cut on")
    alpha = (1 - confidence_level) / len(CANDIDATE_CUTS)
    correct = decision == y
    for cut in CANDIDATE_CUTS:  # lowest first: the first that passes accepts the most
        keep = confidence >= cut
        n, right = int(keep.sum()), int(correct[keep].sum())
        bound = accuracy_lower_bound(right, n, alpha)
        if n and bound >= target_accuracy:
            return Referral(float(cut), target_accuracy, n / len(y), right / n, len(y),
                            confidence_level, bound)
    return Referral(REFER_ALL, target_accuracy, 0.0, float("nan"), len(y), confidence_level)


def referral_figures(y: np.ndarray, decision: np.ndarray, confidence: np.ndarray,
                     cut: float) -> dict[str, float]:
    """Coverage (share accepted) and the accuracy of the accepted cases at `cut`."""
    keep = accepted(confidence, cut)
    accuracy = float(np.mean(np.asarray(decision)[keep] == np.asarray(y)[keep])) \
        if keep.any() else float("nan")
    return {"coverage": float(keep.mean()) if len(keep) else float("nan"),
            "accuracy_accepted": accuracy}
