"""The figures of an external evaluation, on the served model's own answers (not recomputed
from raw outputs): what a site would see if it deployed the registered version. Pure numpy, so
a thousand group-bootstrap resamples stay cheap.

Calibration on new data is read as logistic recalibration (Cox 1958; Van Calster et al. 2019):
fit logit P(y) = a + b * logit(p). The slope b is 1 for calibrated probabilities, below 1 when
they are too extreme (over-confident), above 1 when too modest; calibration-in-the-large is
the intercept with b fixed at 1, 0 when the mean risk is right, below 0 when the model
over-predicts. A binary task reads its positive class's probability; a multi-class task its
top-label confidence against whether the decision was right.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from orchestrator.clinical.calibration import brier_score, expected_calibration_error
from orchestrator.clinical.conformal import safe_name
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.weighted_metrics import weighted_metrics

EPS = 1e-6  # probabilities clipped to [EPS, 1 - EPS] before the logit
NEWTON_STEPS = 50


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _separated(x: np.ndarray, y: np.ndarray) -> bool:
    """One class only, or a cut on x that splits the classes: no finite maximum likelihood."""
    if y.all() or not y.any():
        return True
    return bool(x[y].min() >= x[~y].max() or x[~y].min() >= x[y].max())


def calibration_slope(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(a, b) of logit P(y) = a + b logit(p), by maximum likelihood (Newton's method; the same
    fit as scikit-learn's unpenalised LogisticRegression). NaN when no finite fit exists."""
    y, x = np.asarray(y).astype(bool), logit(p)
    if _separated(x, y):
        return float("nan"), float("nan")
    design = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(NEWTON_STEPS):
        mu = 1.0 / (1.0 + np.exp(-(design @ beta)))
        weight = np.maximum(mu * (1.0 - mu), 1e-12)
        step = np.linalg.solve((design * weight[:, None]).T @ design, design.T @ (y - mu))
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def calibration_in_the_large(y: np.ndarray, p: np.ndarray) -> float:
    """The intercept a of logit P(y) = a + logit(p) (slope fixed at 1): the shift of the
    log-odds that makes the mean predicted risk the observed one. NaN with one class only."""
    y, x = np.asarray(y, dtype=np.float64), logit(p)
    if y.all() or not y.any():
        return float("nan")
    gap = lambda a: float(np.mean(1.0 / (1.0 + np.exp(-(a + x)))) - y.mean())  # noqa: E731
    return float(brentq(gap, -50.0, 50.0, xtol=1e-10))


@dataclass(frozen=True)
class Cases:
    """An external set as the served model answered it, one row per image, in the model's
    class order: labels, calibrated probabilities, the decision and its confidence, whether
    it was referred, and, where the model has them, whether the true class was in the
    prediction set (and the set's size) and whether the image was flagged out of
    distribution."""

    y: np.ndarray
    probs: np.ndarray
    decision: np.ndarray
    confidence: np.ndarray
    refer: np.ndarray
    classes: tuple[str, ...]
    positive: int | None = None  # a binary model's positive class index
    in_set: np.ndarray | None = None
    set_size: np.ndarray | None = None
    ood: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def calibration_target(self) -> tuple[np.ndarray, np.ndarray]:
        """(event, probability): the positive class for a binary model, else whether the
        decision was right against its confidence."""
        if self.positive is not None:
            return self.y == self.positive, self.probs[:, self.positive]
        return self.decision == self.y, self.confidence


def cases_from_answer(answer: pd.DataFrame, y: np.ndarray, classes: Sequence[str],
                      positive_class: str | None = None) -> Cases:
    """The served columns of a single-label model (`serving.contract`) -> `Cases`."""
    classes = tuple(classes)
    index = {c: k for k, c in enumerate(classes)}
    probs = answer[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    sets = answer.get("prediction_set")
    in_set = size = None
    if sets is not None:
        members = [json.loads(s) for s in sets]
        in_set = np.array([classes[t] in m for t, m in zip(y, members)])
        size = np.array([len(m) for m in members], dtype=np.int64)
    ood = answer.get("out_of_distribution")
    return Cases(y=np.asarray(y, dtype=np.int64), probs=probs,
                 decision=np.array([index[d] for d in answer["decision"]], dtype=np.int64),
                 confidence=answer["confidence"].to_numpy(np.float64),
                 refer=answer["refer"].to_numpy(bool), classes=classes,
                 positive=None if positive_class is None else index[positive_class],
                 in_set=in_set, set_size=size,
                 ood=None if ood is None else ood.to_numpy(bool))


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def decision_figures(y: np.ndarray, decision: np.ndarray, classes: Sequence[str],
                     positive: int | None) -> dict[str, float]:
    """At the served decisions (the registered operating point): a binary model's
    sensitivity, specificity, PPV and NPV; otherwise each class's recall."""
    if positive is None:
        return {f"recall_{safe_name(c)}": _ratio(float(np.sum((y == k) & (decision == k))),
                                                 float(np.sum(y == k)))
                for k, c in enumerate(classes)}
    truth, called = y == positive, decision == positive
    tp, fp = float(np.sum(truth & called)), float(np.sum(~truth & called))
    fn, tn = float(np.sum(truth & ~called)), float(np.sum(~truth & ~called))
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}


def figures(cases: Cases, idx: np.ndarray | None = None) -> dict[str, float]:
    """Every figure of the external set (or of the cases `idx`, a bootstrap resample): the
    task's metrics, then `served_figures`."""
    take = slice(None) if idx is None else idx
    return {**fast_metrics(cases.y[take], cases.probs[take], cases.positive),
            **served_figures(cases, idx)}


def task_figures(cases: Cases, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The task's metrics of every resample at once, from its counts (`weighted_metrics`)."""
    return weighted_metrics(cases.y, cases.probs, counts, cases.positive)


def served_figures(cases: Cases, idx: np.ndarray | None = None) -> dict[str, float]:
    """The decision figures, calibration (intercept, slope, Brier, ECE), the refer rule's
    coverage and accepted accuracy, and the sets' and OOD flag's shares where the model has
    them: the figures of the served answers beyond the task's metrics."""
    take = slice(None) if idx is None else idx
    y, probs, decision = cases.y[take], cases.probs[take], cases.decision[take]
    out = decision_figures(y, decision, cases.classes, cases.positive)
    event, p = cases.calibration_target()
    out["calibration_intercept"] = calibration_in_the_large(event[take], p[take])
    out["calibration_slope"] = calibration_slope(event[take], p[take])[1]
    out["brier"] = brier_score(y, probs)
    out["ece"] = expected_calibration_error(y, probs)
    accepted = ~cases.refer[take]
    out["refer_coverage"] = float(accepted.mean())
    out["accuracy_accepted"] = (float(np.mean(decision[accepted] == y[accepted]))
                                if accepted.any() else float("nan"))
    if cases.in_set is not None:
        out["set_coverage"] = float(cases.in_set[take].mean())
        out["set_size_mean"] = float(cases.set_size[take].mean())
    if cases.ood is not None:
        out["ood_flagged"] = float(cases.ood[take].mean())
    return out


def split_groups(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration rows, evaluation rows), boolean masks: `fraction` of the distinct groups
    (at least one, and at least one left), drawn with `seed`, for the calibration part. A
    patient's images all fall on one side, so no case is both fitted and judged on."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the recalibration fraction must be in (0, 1), got {fraction}")
    names = np.unique(np.asarray(groups))
    if len(names) < 2:
        raise ValueError("recalibrating needs at least two groups: one to fit on, one to judge")
    take = min(max(1, int(round(fraction * len(names)))), len(names) - 1)
    chosen = np.random.default_rng(seed).permutation(names)[:take]
    calibrate = np.isin(np.asarray(groups), chosen)
    return calibrate, ~calibrate
