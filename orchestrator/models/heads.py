"""Several answers from one image, as one matrix: how a multi-head task's targets and
predictions are laid out, so every later stage (TTA, ensembles, selection) averages and stores
them as it does a single head's probabilities.

Targets: (N, H) float64, heads in the task's order; a classification head's column holds the
class index, a regression head's the value in the head's unit.
Predictions: (N, D) with D = sum of the heads' widths: a classification head's C probabilities,
then a regression head's one value in its unit. Averaging such matrices averages probabilities
per head and regression values alike, which is what an ensemble and TTA should do.

Pure numpy; no TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from orchestrator.errors import ConfigError
from tasks.base import HEAD_KINDS, Head, Task


def column_slices(task: Task) -> dict[str, slice]:
    """Each head's columns in a prediction matrix."""
    out, start = {}, 0
    for head in task.heads:
        out[head.name] = slice(start, start + head.width)
        start += head.width
    return out


def prediction_width(task: Task) -> int:
    return sum(h.width for h in task.heads) if task.is_multihead else task.num_classes


def as_matrix(predictions, task: Task) -> np.ndarray:
    """A model's output as one (N, D) matrix: a dict of per-head outputs is concatenated in the
    task's head order; a single head's (N, C) probabilities pass through."""
    if not isinstance(predictions, Mapping):
        return np.asarray(predictions)
    missing = [h.name for h in task.heads if h.name not in predictions]
    if missing:
        raise ValueError(f"model outputs {sorted(predictions)} lack the heads {missing}")
    parts = [np.asarray(predictions[h.name], dtype=np.float64).reshape(-1, h.width)
             for h in task.heads]
    return np.concatenate(parts, axis=1)


def split_predictions(matrix: np.ndarray, task: Task) -> dict[str, np.ndarray]:
    """Per head: (N, C) probabilities, or (N,) values."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != prediction_width(task):
        raise ValueError(f"predictions of shape {matrix.shape} do not match the heads of "
                         f"{task.key} ({prediction_width(task)} columns)")
    out = {}
    for head in task.heads:
        block = matrix[:, column_slices(task)[head.name]]
        out[head.name] = block if head.is_classification else block[:, 0]
    return out


def split_targets(y: np.ndarray, task: Task) -> dict[str, np.ndarray]:
    """Per head: int class indices, or float values."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(task.heads):
        raise ValueError(f"targets of shape {y.shape} do not match the {len(task.heads)} heads "
                         f"of {task.key}")
    return {h.name: (y[:, i].astype(np.int64) if h.is_classification else y[:, i])
            for i, h in enumerate(task.heads)}


@dataclass(frozen=True)
class TargetScale:
    """A regression head's training mean and standard deviation: the model learns the
    standardised value and outputs the head's unit."""

    mean: float
    std: float


def target_scales(y_train: np.ndarray, task: Task) -> dict[str, TargetScale]:
    """From the training split only (the validation and test values stay unseen)."""
    targets = split_targets(y_train, task)
    out = {}
    for head in task.heads:
        if head.is_classification:
            continue
        values = targets[head.name]
        std = float(np.std(values))
        out[head.name] = TargetScale(float(np.mean(values)), std if std > 1e-12 else 1.0)
    return out


def parse_head_weights(text: str, task: Task) -> dict[str, float]:
    """`"shape=1,size=0.5"` -> every head's loss weight (unnamed heads keep the task's). A kind
    (`regression=0.5`) weighs every head of that kind; a head's own name wins over its kind.

    A flat string so Tune can search it as a choice and MLflow logs it as one param. For a task
    whose heads come from the data (none yet), only the form is checked here; the names are
    checked when the trial has read its data."""
    weights = {h.name: h.loss_weight for h in task.heads}
    if not text:
        return weights
    if not task.is_multihead:
        raise ConfigError(f"head_weights {text!r}: task {task.key} has a single head")
    known = [*weights, *HEAD_KINDS]
    given: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or (task.heads and name not in known):
            raise ConfigError(f"head_weights {text!r}: {item.strip()!r} is not HEAD=WEIGHT with "
                              f"HEAD one of {', '.join(known) if task.heads else 'the heads'}")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"head_weights {text!r}: weight {value.strip()!r} of head {name} "
                              "is not a number") from None
        if not weight > 0:
            raise ConfigError(f"head_weights {text!r}: weight of head {name} must be > 0")
        given[name] = weight
    for head in task.heads:
        weights[head.name] = given.get(head.name, given.get(head.kind, weights[head.name]))
    return weights


def head_label(head: Head) -> str:
    """How a head is named to a person: `size (mm)`, `shape (4 classes)`."""
    if head.is_classification:
        return f"{head.name} ({len(head.classes)} classes)"
    return f"{head.name} ({head.unit})" if head.unit else head.name
