"""Classification metrics on (N, C) probabilities: one function, every stage reads it.

Pure functions over numpy arrays, computed with scikit-learn. The task's primary metric is looked
up by name here, so the trainer, the scheduler and the ensemble selection score the same way.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from tasks.base import Task, positive_column

EPS = 1e-7


def _positive_scores(probs: np.ndarray, positive_index: int | None) -> np.ndarray:
    return probs[:, positive_column(positive_index)]


def _roc_auc(y: np.ndarray, probs: np.ndarray, positive_index: int | None) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        pos = positive_column(positive_index)
        return float(skm.roc_auc_score(y == pos, probs[:, pos]))
    present = np.unique(y)
    if len(present) < probs.shape[1]:  # one-vs-rest needs every class present
        return float("nan")
    return float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def _pr_auc(y: np.ndarray, probs: np.ndarray, positive_index: int | None) -> float:
    """Average precision: for the positive class when binary, macro one-vs-rest otherwise."""
    if probs.shape[1] == 2:
        pos = positive_column(positive_index)
        if not np.any(y == pos):
            return float("nan")
        return float(skm.average_precision_score(y == pos, probs[:, pos]))
    onehot = np.eye(probs.shape[1])[y]
    present = onehot.sum(axis=0) > 0
    if not present.all():
        return float("nan")
    return float(skm.average_precision_score(onehot, probs, average="macro"))


def case_log_loss(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each case's cross-entropy of its true class, the probability clipped to [EPS, 1]."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], EPS, 1.0))


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class (unweighted, unsmoothed): comparable across trials."""
    return float(np.mean(case_log_loss(y, probs)))


def classification_metrics(y: np.ndarray, probs: np.ndarray, task: Task) -> dict[str, float]:
    """Every metric the trainer logs; `predicted_positive_rate` only for binary tasks. A
    multi-head task's are `multihead_metrics`."""
    if task.is_multihead:
        return multihead_metrics(y, probs, task)
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
        pos = task.binary_positive
        out["predicted_positive_rate"] = float(np.mean(pred == pos))
    return out


def task_loss(y: np.ndarray, probs: np.ndarray, task: Task) -> float:
    """The log loss; a multi-head task's scale-free `loss` (`multihead_metrics`)."""
    if not task.is_multihead:
        return log_loss(np.asarray(y, dtype=int), np.asarray(probs, dtype=np.float64))
    from orchestrator.models.heads import split_predictions, split_targets

    targets, preds = split_targets(y, task), split_predictions(probs, task)
    losses = []
    for head in task.heads:
        t, p = targets[head.name], preds[head.name]
        if head.is_classification:
            losses.append(log_loss(t, p))
        else:
            variance = float(np.var(t))
            losses.append(float(np.mean((p - t) ** 2)) / variance if variance > 0
                          else float("nan"))
    return float(np.mean(losses))


def primary_metric(y: np.ndarray, probs: np.ndarray, task: Task) -> float:
    """Only the task's metric: ensemble selection calls this hundreds of times."""
    if task.is_multihead:
        return mean_skill(y, probs, task)
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


# --- several heads ---------------------------------------------------------------------------


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE and RMSE in the target's unit; R² against the mean of the values scored."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    err = pred - y
    spread = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": 1.0 - float(np.sum(err ** 2)) / spread if spread > 0 else float("nan")}


def head_skill(head, y: np.ndarray, pred: np.ndarray) -> float:
    """0 for a trivial answer, 1 for a perfect one: balanced accuracy rescaled so that chance
    (1/C) is 0 for a classification head; R² (the mean predictor is 0) for a regression head."""
    if head.is_classification:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bacc = float(skm.balanced_accuracy_score(y, pred.argmax(axis=1)))
        chance = 1.0 / len(head.classes)
        return (bacc - chance) / (1.0 - chance)
    return regression_metrics(y, pred)["r2"]


def mean_skill(y: np.ndarray, matrix: np.ndarray, task: Task) -> float:
    """A multi-head task's one sweep metric: the mean of its heads' skills (`head_skill`), each
    head counting once whatever its loss weight, so heads with many or few classes, and
    measurements in any unit, weigh alike."""
    from orchestrator.models.heads import split_predictions, split_targets

    targets, preds = split_targets(y, task), split_predictions(matrix, task)
    return float(np.mean([head_skill(h, targets[h.name], preds[h.name]) for h in task.heads]))


def multihead_metrics(y: np.ndarray, matrix: np.ndarray, task: Task) -> dict[str, float]:
    """Per head, prefixed by its name: balanced accuracy, accuracy, macro F1, log loss and skill
    of a classification head; MAE, RMSE, R² of a regression head. Then `mean_skill` and `loss`
    (the mean over heads of the log loss, and of the squared error over the values' variance),
    a scale-free loss comparable across trials."""
    from orchestrator.models.heads import split_predictions, split_targets

    targets, preds = split_targets(y, task), split_predictions(matrix, task)
    out: dict[str, float] = {}
    skills, losses = [], []
    for head in task.heads:
        t, p = targets[head.name], preds[head.name]
        if head.is_classification:
            pred = p.argmax(axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = {
                    "accuracy": float(skm.accuracy_score(t, pred)),
                    "balanced_accuracy": float(skm.balanced_accuracy_score(t, pred)),
                    "macro_f1": float(skm.f1_score(t, pred, labels=np.arange(p.shape[1]),
                                                   average="macro", zero_division=0)),
                    "loss": log_loss(t, p),
                }
            losses.append(scores["loss"])
        else:
            scores = regression_metrics(t, p)
            variance = float(np.var(t))
            losses.append(scores["rmse"] ** 2 / variance if variance > 0 else float("nan"))
        scores["skill"] = head_skill(head, t, p)
        skills.append(scores["skill"])
        out.update({f"{head.name}_{k}": v for k, v in scores.items()})
    out["mean_skill"] = float(np.mean(skills))
    out["loss"] = float(np.mean(losses))
    return out
