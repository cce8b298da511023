"""The test metrics of every bootstrap resample at once, from a matrix of counts.

A resample is a row of `counts` (B, n): counts[b, i] = how often case i is drawn in resample b
(a whole group is drawn at once, so rows differ in total). Each figure is its per-case
definition weighted by those counts, for all B rows in a few array operations, instead of one
call per resample (docs/benchmarks.md, "Bootstrap intervals"). The figures are scikit-learn's
(tests/test_weighted_metrics.py checks every resample against it): accuracy, balanced accuracy,
macro-F1, ROC-AUC (binary: the positive class; multiclass: macro one-vs-rest, NaN when a class
is absent), PR-AUC as average precision, the log loss of `orchestrator.metrics`, and for two
classes the predicted positive rate (argmax). A single set of cases is the row of ones
(`resampled_metrics.fast_metrics`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from orchestrator.metrics import case_log_loss
from tasks.base import positive_column

Figures = dict[str, np.ndarray]  # name -> (B,) values, one per resample


def resample_counts(resamples: Sequence[np.ndarray], n_cases: int) -> np.ndarray:
    """(B, n_cases) float64 counts of each case in each resample (index arrays of any length)."""
    sizes = [len(r) for r in resamples]
    rows = np.repeat(np.arange(len(resamples), dtype=np.int64), sizes)
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in resamples])
    return np.bincount(rows * n_cases + flat, minlength=len(resamples) * n_cases).reshape(
        len(resamples), n_cases).astype(np.float64)


def weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(B,) mean of per-case `values` over each resample."""
    return (counts @ np.asarray(values, dtype=np.float64)) / counts.sum(axis=1)


def confusion(counts: np.ndarray, y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """(B, C, C) counts, rows true, columns predicted (exact: sums of whole numbers)."""
    cell = np.zeros((len(y), c * c))
    cell[np.arange(len(y)), np.asarray(y) * c + np.asarray(pred)] = 1.0
    return (counts @ cell).reshape(len(counts), c, c)


def label_figures(cm: np.ndarray) -> Figures:
    """Accuracy, balanced accuracy (recall averaged over the classes present; NaN when none)
    and macro-F1 (a class never true nor predicted scores 0) of each (C, C) confusion."""
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        return {"accuracy": tp.sum(axis=1) / support.sum(axis=1),
                "balanced_accuracy": recall.sum(axis=1) / present.sum(axis=1),
                "macro_f1": f1.mean(axis=1)}


def _levels(counts: np.ndarray, positive: np.ndarray, scores: np.ndarray):
    """Per resample, at each distinct score, descending, (B, L) each: the positive weight, the
    whole weight and the whole weight at or above it; and which levels hold a positive case."""
    order = np.argsort(scores, kind="stable")[::-1]
    s, t = scores[order], np.asarray(positive, dtype=np.float64)[order]
    w = counts[:, order]
    if (s[1:] == s[:-1]).any():  # ties: one level per distinct score
        starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
        pos, w = np.add.reduceat(w * t, starts, axis=1), np.add.reduceat(w, starts, axis=1)
        has = np.add.reduceat(t, starts) > 0
    else:
        pos, has = w * t, t > 0
    return pos, w, np.cumsum(w, axis=1), has


def roc_auc(pos: np.ndarray, total: np.ndarray, drawn: np.ndarray, _=None) -> np.ndarray:
    """Mann-Whitney U / (n+ n-), ties counted half (sklearn's roc_auc_score); NaN without
    positives or negatives. U = sum over levels of pos x (negatives below + half those tied)
    = n+ n- + n+^2 / 2 - sum pos x (drawn - total / 2): exact sums of halves, so the one
    correctly rounded value."""
    n_pos = pos.sum(axis=1)
    n_neg = drawn[:, -1] - n_pos
    u = n_pos * n_neg + 0.5 * n_pos ** 2 - np.einsum("ij,ij->i", pos, drawn - 0.5 * total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def average_precision(pos: np.ndarray, total: np.ndarray, drawn: np.ndarray,
                      has: np.ndarray) -> np.ndarray:
    """Sum over distinct thresholds, descending, of (recall step) x precision: sklearn's
    average_precision_score; NaN without positives. The recall step at a threshold is its
    positive weight / n+, so only the levels that hold a positive case (`has`) count."""
    pos, drawn = pos[:, has], drawn[:, has]
    tps = np.cumsum(pos, axis=1)
    n_pos = tps[:, -1] if tps.shape[1] else np.zeros(len(pos))
    with np.errstate(invalid="ignore", divide="ignore"):  # drawn is 0 only where tps is
        ap = np.einsum("ij,ij->i", pos, tps / np.maximum(drawn, 1.0)) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def weighted_metrics(y: np.ndarray, probs: np.ndarray, counts: np.ndarray,
                     positive_index: int | None = None) -> Figures:
    """Every figure `orchestrator.metrics.classification_metrics` gives, per resample:
    accuracy, balanced_accuracy, macro_f1, roc_auc, pr_auc, loss, and for two classes the
    predicted positive rate."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    out = label_figures(confusion(counts, y, pred, c))
    pos = positive_column(positive_index) if c == 2 else None
    ranked = [_levels(counts, y == k, probs[:, k]) for k in ([pos] if c == 2 else range(c))]
    # multiclass: a class absent from a resample leaves its one-vs-rest NaN, and so the mean
    out["roc_auc"] = np.mean([roc_auc(*r) for r in ranked], axis=0)
    out["pr_auc"] = np.mean([average_precision(*r) for r in ranked], axis=0)
    out["loss"] = weighted_mean(counts, case_log_loss(y, probs))
    if c == 2:
        out["predicted_positive_rate"] = weighted_mean(counts, pred == pos)
    return out


def regression_figures(counts: np.ndarray, t: np.ndarray, p: np.ndarray) -> Figures:
    """`orchestrator.metrics.regression_metrics` per resample: MAE, RMSE, and R² against the
    resample's own mean (NaN when its values do not vary); `variance`, for the scale-free loss."""
    err = p - t
    mean = weighted_mean(counts, t)
    spread = (counts * (t[None, :] - mean[:, None]) ** 2).sum(axis=1)
    sse = counts @ err ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(spread > 0, 1.0 - sse / spread, np.nan)
    return {"mae": weighted_mean(counts, np.abs(err)),
            "rmse": np.sqrt(sse / counts.sum(axis=1)), "r2": r2,
            "variance": spread / counts.sum(axis=1)}


def weighted_multihead_metrics(y: np.ndarray, matrix: np.ndarray, counts: np.ndarray,
                               task) -> Figures:
    """`orchestrator.metrics.multihead_metrics` per resample, the same keys in the same order
    (per head `<head>_accuracy`, `_balanced_accuracy`, `_macro_f1`, `_loss`, `_skill` or
    `_mae`, `_rmse`, `_r2`, `_skill`; then `mean_skill` and `loss`)."""
    from orchestrator.models.heads import split_predictions, split_targets

    targets, preds = split_targets(y, task), split_predictions(matrix, task)
    out: Figures = {}
    skills, losses = [], []
    for head in task.heads:
        t, p = targets[head.name], np.asarray(preds[head.name], dtype=np.float64)
        if head.is_classification:
            c = len(head.classes)
            scores = label_figures(confusion(counts, t, p.argmax(axis=1), c))
            scores["loss"] = weighted_mean(counts, case_log_loss(t, p))
            scores["skill"] = (scores["balanced_accuracy"] - 1.0 / c) / (1.0 - 1.0 / c)
            losses.append(scores["loss"])
        else:
            scores = regression_figures(counts, t, p)
            variance = scores.pop("variance")
            with np.errstate(invalid="ignore", divide="ignore"):
                losses.append(np.where(variance > 0, scores["rmse"] ** 2 / variance, np.nan))
            scores["skill"] = scores["r2"]
        skills.append(scores["skill"])
        out.update({f"{head.name}_{k}": v for k, v in scores.items()})
    out["mean_skill"] = np.mean(skills, axis=0)
    out["loss"] = np.mean(losses, axis=0)
    return out


def weighted_task_metrics(y: np.ndarray, probs: np.ndarray, counts: np.ndarray,
                          task) -> Figures:
    """The task's test figures of one model per resample: a single-label task's
    classification figures, or every head's and mean_skill."""
    if task.heads:
        return weighted_multihead_metrics(y, probs, counts, task)
    return weighted_metrics(y, probs, counts, task.positive_index)
