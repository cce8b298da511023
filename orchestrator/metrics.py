"""Classification metrics on (N, C) probabilities: one function, every stage reads it.

Pure functions over numpy arrays, computed with scikit-learn. The task's primary metric is looked
up by name here, so the trainer, the scheduler and the ensemble selection score the same way.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from tasks.base import Task

EPS = 1e-7


def _positive_scores(probs: np.ndarray, positive_index: int | None) -> np.ndarray:
    return probs[:, 1 if positive_index is None else positive_index]


def _roc_auc(y: np.ndarray, probs: np.ndarray, positive_index: int | None) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        pos = 1 if positive_index is None else positive_index
        return float(skm.roc_auc_score(y == pos, probs[:, pos]))
    present = np.unique(y)
    if len(present) < probs.shape[1]:  # one-vs-rest needs every class present
        return float("nan")
    return float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def _pr_auc(y: np.ndarray, probs: np.ndarray, positive_index: int | None) -> float:
    """Average precision: for the positive class when binary, macro one-vs-rest otherwise."""
    if probs.shape[1] == 2:
        pos = 1 if positive_index is None else positive_index
        if not np.any(y == pos):
            return float("nan")
        return float(skm.average_precision_score(y == pos, probs[:, pos]))
    onehot = np.eye(probs.shape[1])[y]
    present = onehot.sum(axis=0) > 0
    if not present.all():
        return float("nan")
    return float(skm.average_precision_score(onehot, probs, average="macro"))


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class (unweighted, unsmoothed): comparable across trials."""
    picked = np.clip(probs[np.arange(len(y)), y], EPS, 1.0)
    return float(-np.mean(np.log(picked)))


def classification_metrics(y: np.ndarray, probs: np.ndarray, task: Task) -> dict[str, float]:
    """Every metric the trainer logs; `predicted_positive_rate` only for binary tasks."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs shape {probs.shape} does not match {len(y)} labels")
    pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on absent classes; NaN/0 says it plainly
        out = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro",
                                           zero_division=0)),
            "roc_auc": _roc_auc(y, probs, task.positive_index),
            "pr_auc": _pr_auc(y, probs, task.positive_index),
            "loss": log_loss(y, probs),
        }
    if task.is_binary:
        pos = 1 if task.positive_index is None else task.positive_index
        out["predicted_positive_rate"] = float(np.mean(pred == pos))
    return out


def primary_metric(y: np.ndarray, probs: np.ndarray, task: Task) -> float:
    """Only the task's metric: ensemble selection calls this hundreds of times."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task.metric == "accuracy":
            return float(skm.accuracy_score(y, pred))
        if task.metric == "balanced_accuracy":
            return float(skm.balanced_accuracy_score(y, pred))
        if task.metric == "macro_f1":
            return float(skm.f1_score(y, pred, labels=np.arange(probs.shape[1]),
                                      average="macro", zero_division=0))
        if task.metric == "roc_auc":
            return _roc_auc(y, probs, task.positive_index)
        return _pr_auc(y, probs, task.positive_index)


def is_better(candidate: float, incumbent: float | None, mode: str) -> bool:
    """Strictly better under `mode`; NaN never wins, anything beats no incumbent."""
    if np.isnan(candidate):
        return False
    if incumbent is None or np.isnan(incumbent):
        return True
    return candidate > incumbent if mode == "max" else candidate < incumbent
