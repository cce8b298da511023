"""The test metrics of one set of cases, in numpy, fast enough to call per bootstrap resample.

Each is `weighted_metrics`' figure with every case counted once: one definition, whether a
bootstrap scores all its resamples at once or a caller scores one set. Same values as
scikit-learn (tests/test_clinical.py checks them against it), whose versions spend most of
10 ms per call validating input; these take well under 1.
"""
from __future__ import annotations

import numpy as np

from orchestrator.clinical.weighted_metrics import (weighted_metrics, weighted_multihead_metrics,
                                                    weighted_task_metrics)


def _once(figures: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in figures.items()}


def fast_metrics(y: np.ndarray, probs: np.ndarray, positive_index: int | None = None,
                 ) -> dict[str, float]:
    """Every figure `orchestrator.metrics.classification_metrics` gives, the same values:
    accuracy, balanced_accuracy, macro_f1, roc_auc, pr_auc, loss, and for two classes the
    predicted positive rate (argmax)."""
    return _once(weighted_metrics(y, probs, np.ones((1, len(y))), positive_index))


def fast_multihead_metrics(y: np.ndarray, matrix: np.ndarray, task) -> dict[str, float]:
    """`orchestrator.metrics.multihead_metrics` in numpy, the same keys and values (per head
    `<head>_accuracy`, `_balanced_accuracy`, `_macro_f1`, `_loss`, `_skill` or `_mae`, `_rmse`,
    `_r2`, `_skill`; then `mean_skill` and `loss`), for a multi-head bootstrap."""
    return _once(weighted_multihead_metrics(y, matrix, np.ones((1, len(y))), task))


def task_metrics(y: np.ndarray, probs: np.ndarray, task) -> dict[str, float]:
    """The task's test figures of one model: a single-label task's classification figures, or
    every head's and mean_skill (the shape of the figures is the task's, read here once)."""
    return _once(weighted_task_metrics(y, probs, np.ones((1, len(y))), task))
