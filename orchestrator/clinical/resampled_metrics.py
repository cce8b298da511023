"""The test metrics, in numpy, fast enough to compute a thousand times for a bootstrap.

Same definitions as scikit-learn (tests/test_clinical.py checks them against it): accuracy,
balanced accuracy, macro-F1, ROC-AUC (binary: the positive class; multiclass: macro one-vs-rest)
and PR-AUC as average precision (binary: positive class; multiclass: macro one-vs-rest).
scikit-learn's versions spend most of 10 ms per call validating input; these take well under 1.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from orchestrator.metrics import log_loss
from tasks.base import positive_column


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows true, columns predicted."""
    return np.bincount(y * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.float64)


def binary_roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U / (n+ n-), ties counted half: equal to sklearn's roc_auc_score."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision: sklearn's definition."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last_of_tie]
    precision = tps / (last_of_tie + 1.0)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_metrics(y: np.ndarray, probs: np.ndarray, positive_index: int | None = None,
                 ) -> dict[str, float]:
    """Every figure `orchestrator.metrics.classification_metrics` gives, the same values:
    accuracy, balanced_accuracy, macro_f1, roc_auc, pr_auc, loss, and for two classes the
    predicted positive rate (argmax)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion(y, pred, c)
    support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    out = {"accuracy": float(tp.sum() / len(y)),
           "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
           "macro_f1": float(f1.mean())}
    if c == 2:
        pos = positive_column(positive_index)
        out["roc_auc"] = binary_roc_auc(y == pos, probs[:, pos])
        out["pr_auc"] = average_precision(y == pos, probs[:, pos])
    elif not present.all():  # one-vs-rest needs every class (as metrics.py says NaN)
        out["roc_auc"] = out["pr_auc"] = float("nan")
    else:
        out["roc_auc"] = float(np.mean([binary_roc_auc(y == k, probs[:, k]) for k in range(c)]))
        out["pr_auc"] = float(np.mean([average_precision(y == k, probs[:, k])
                                       for k in range(c)]))
    out["loss"] = log_loss(y, probs)
    if c == 2:
        out["predicted_positive_rate"] = float(np.mean(pred == pos))
    return out


def fast_multihead_metrics(y: np.ndarray, matrix: np.ndarray, task) -> dict[str, float]:
    """`orchestrator.metrics.multihead_metrics` in numpy, the same keys and values (per head
    `<head>_accuracy`, `_balanced_accuracy`, `_macro_f1`, `_loss`, `_skill` or `_mae`, `_rmse`,
    `_r2`, `_skill`; then `mean_skill` and `loss`), for a multi-head bootstrap."""
    from orchestrator.models.heads import split_predictions, split_targets
    from orchestrator.metrics import regression_metrics

    targets, preds = split_targets(y, task), split_predictions(matrix, task)
    out: dict[str, float] = {}
    skills, losses = [], []
    for head in task.heads:
        t, p = targets[head.name], np.asarray(preds[head.name], dtype=np.float64)
        if head.is_classification:
            c = len(head.classes)
            cm = confusion(t, p.argmax(axis=1), c)
            support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
            present = support > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = np.where(present, tp / support, 0.0)
                f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
            bacc = float(recall[present].mean()) if present.any() else float("nan")
            scores = {"accuracy": float(tp.sum() / len(t)), "balanced_accuracy": bacc,
                      "macro_f1": float(f1.mean()), "loss": log_loss(t, p),
                      "skill": (bacc - 1.0 / c) / (1.0 - 1.0 / c)}
            losses.append(scores["loss"])
        else:
            scores = regression_metrics(t, p)
            variance = float(np.var(t))
            losses.append(scores["rmse"] ** 2 / variance if variance > 0 else float("nan"))
            scores["skill"] = scores["r2"]
        skills.append(scores["skill"])
        out.update({f"{head.name}_{k}": v for k, v in scores.items()})
    out["mean_skill"] = float(np.mean(skills))
    out["loss"] = float(np.mean(losses))
    return out


def task_metrics(y: np.ndarray, probs: np.ndarray, task) -> dict[str, float]:
    """The task's test figures of one model: a single-label task's classification figures, or
    every head's and mean_skill (the shape of the figures is the task's, read here once)."""
    if task.heads:
        return fast_multihead_metrics(y, probs, task)
    return fast_metrics(y, probs, task.positive_index)
