"""The decision threshold of a binary task, chosen on validation, and the figures at it.

A case is called positive when its positive-class probability is >= the threshold (scikit-learn's
`roc_curve` convention). Rules:
- "sensitivity_bound" (the ensemble's default): the highest specificity among thresholds whose
  held-out sensitivity has a Wilson 95% lower bound at or above the target (0.90). A point
  estimate that just reaches the target on a few hundred cases falls short on new patients
  about half the time; the bound asks the held-out data to show the target with confidence.
  When no threshold can show it (too few positive cases), the one with the highest bound.
- "sensitivity": the highest specificity whose point sensitivity reaches the target.
- "youden": the highest sensitivity + specificity - 1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm

RULES = ("sensitivity_bound", "sensitivity", "youden")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    rule: str  # "sensitivity>=0.90" or "youden"
    val_sensitivity: float
    val_specificity: float


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, *, rule: str = "sensitivity",
                     target_sensitivity: float = 0.90) -> OperatingPoint:
    """`y_true` 1 for positive; `scores` the positive-class probabilities (validation only).

    Rule "sensitivity": among thresholds reaching the target sensitivity, the one with the
    highest specificity (then the highest sensitivity, then the highest threshold).
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; valid: {', '.join(RULES)}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    if y.all() or not y.any():
        raise ValueError("choosing a threshold needs both positive and negative validation cases")
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # the first is +inf: "call nothing positive"
    spec = 1.0 - fpr
    if rule == "sensitivity_bound":
        positives = int(y.sum())
        bound = wilson_lower_bound(np.rint(tpr * positives), positives)
        ok = np.flatnonzero(bound >= target_sensitivity - 1e-12)
        if not len(ok):  # cannot be shown on this many positives: the most certain threshold
            ok = np.flatnonzero(bound >= bound.max() - 1e-12)
        order = np.lexsort((thresholds[ok], tpr[ok], spec[ok]))
        best = ok[order[-1]]
        label = f"sensitivity_lower95>={target_sensitivity:g}"
    elif rule == "youden":
        # highest J, then highest threshold
        order = np.lexsort((thresholds, tpr + spec - 1.0))
        best = order[-1]
        label = "youden"
    else:
        ok = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        order = np.lexsort((thresholds[ok], tpr[ok], spec[ok]))
        best = ok[order[-1]]
        label = f"sensitivity>={target_sensitivity:g}"
    return OperatingPoint(float(thresholds[best]), label, float(tpr[best]), float(spec[best]))


def wilson_lower_bound(successes: np.ndarray, n: int, z: float = Z95) -> np.ndarray:
    """The Wilson score interval's lower end for `successes` of `n` (vectorised)."""
    p = np.asarray(successes, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def binary_figures(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, F1 and predicted positive rate at one threshold."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    tn = float(np.sum(~pred & ~y))

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "predicted_positive_rate": ratio(tp + fp, len(y))}


def threshold_table(y_val: np.ndarray, val_scores: np.ndarray, y_test: np.ndarray | None = None,
                    test_scores: np.ndarray | None = None, *, step: float = 0.01,
                    chosen: float | None = None) -> pd.DataFrame:
    """Sensitivity and specificity across thresholds 0..1 (and at the chosen one), validation
    and, when given, test: the trade-off a clinician wants to see, not something to pick from."""
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    if chosen is not None:
        grid = np.unique(np.append(grid, chosen))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in grid:
            row = {"threshold": float(t), "chosen": chosen is not None and t == chosen}
            for split, y, s in (("val", y_val, val_scores), ("test", y_test, test_scores)):
                if y is None:
                    continue
                f = binary_figures(y, s, t)
                row.update({f"{split}_sensitivity": f["sensitivity"],
                            f"{split}_specificity": f["specificity"],
                            f"{split}_ppv": f["ppv"], f"{split}_npv": f["npv"]})
            rows.append(row)
    return pd.DataFrame(rows)
