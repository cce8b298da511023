"""The served decision and when to refer a case to a person: pure functions on calibrated
probabilities, shared by the clinical report, the pre-registration check and the served model.

- decision: binary tasks are positive when the calibrated positive probability reaches the
  validated threshold; multi-class tasks take the most probable class.
- confidence: the calibrated probability of the decided class, i.e. how likely the model says its
  own decision is right.
- refer: confidence below a cut. The cut is chosen on held-out predictions as the lowest one
  whose accepted cases reach the target accuracy, i.e. the largest coverage that reaches it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TARGET_ACCURACY = 0.95
REFER_ALL = 2.0  # a cut above any probability: no cut reached the target, every case is referred


@dataclass(frozen=True)
class Referral:
    cut: float  # refer when confidence < cut
    target_accuracy: float
    coverage: float  # share of the held-out cases accepted at the cut
    accuracy: float  # accuracy of those accepted cases (nan when none is)
    cases: int  # held-out cases it was chosen on

    @property
    def refers_everything(self) -> bool:
        return self.cut > 1.0


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
                     target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> Referral:
    """The lowest cut (most cases accepted) whose accepted cases reach `target_accuracy`;
    `REFER_ALL` when even the most confident case alone does not."""
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    y, decision = np.asarray(y), np.asarray(decision)
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("no held-out cases to choose a refer cut on")
    order = np.argsort(-confidence, kind="mergesort")
    correct = (decision[order] == y[order]).astype(np.float64)
    running = np.cumsum(correct) / np.arange(1, len(y) + 1)  # accuracy of the k most confident
    sorted_conf = confidence[order]
    # A cut accepts every case at or above it, so only the last of a run of ties is a valid k.
    last_of_tie = np.append(sorted_conf[1:] < sorted_conf[:-1], True)
    valid = np.flatnonzero(last_of_tie & (running >= target_accuracy - 1e-12))
    if not len(valid):
        return Referral(REFER_ALL, target_accuracy, 0.0, float("nan"), len(y))
    k = valid[-1]
    return Referral(float(sorted_conf[k]), target_accuracy, (k + 1) / len(y),
                    float(running[k]), len(y))


def referral_figures(y: np.ndarray, decision: np.ndarray, confidence: np.ndarray,
                     cut: float) -> dict[str, float]:
    """Coverage (share accepted) and the accuracy of the accepted cases at `cut`."""
    keep = accepted(confidence, cut)
    accuracy = float(np.mean(np.asarray(decision)[keep] == np.asarray(y)[keep])) \
        if keep.any() else float("nan")
    return {"coverage": float(keep.mean()) if len(keep) else float("nan"),
            "accuracy_accepted": accuracy}
