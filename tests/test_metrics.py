"""Metrics agree with scikit-learn and behave on degenerate inputs."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from orchestrator.metrics import classification_metrics, is_better, log_loss, primary_metric
from tasks import get_task


def _probs(rng, n, k):
    raw = rng.random((n, k))
    return raw / raw.sum(axis=1, keepdims=True)


def test_binary_metrics_match_sklearn_on_the_positive_class():
    rng = np.random.default_rng(0)
    task = get_task("pneumonia")  # positive class PNEUMONIA = index 1
    y = rng.integers(0, 2, 200)
    p = _probs(rng, 200, 2)
    out = classification_metrics(y, p, task)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert out["predicted_positive_rate"] == pytest.approx(np.mean(p.argmax(1) == 1))
    assert out["loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    task = get_task("leukemia")
    y = rng.integers(0, 4, 300)
    p = _probs(rng, 300, 4)
    out = classification_metrics(y, p, task)
    assert out["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert "predicted_positive_rate" not in out
    assert primary_metric(y, p, task) == out["balanced_accuracy"]


def test_perfect_and_degenerate_predictions():
    task = get_task("pneumonia")
    y = np.array([0, 0, 1, 1])
    perfect = np.eye(2)[y] * 0.98 + 0.01
    out = classification_metrics(y, perfect, task)
    assert out["roc_auc"] == 1.0 and out["accuracy"] == 1.0
    one_class = classification_metrics(np.zeros(4, int), perfect, task)
    assert np.isnan(one_class["roc_auc"])  # undefined, said plainly rather than crashing
    constant = classification_metrics(y, np.tile([0.9, 0.1], (4, 1)), task)
    assert constant["predicted_positive_rate"] == 0.0 and constant["balanced_accuracy"] == 0.5


def test_log_loss_clips_zero_probabilities():
    assert np.isfinite(log_loss(np.array([1]), np.array([[1.0, 0.0]])))


def test_is_better_respects_mode_and_nan():
    assert is_better(0.8, 0.7, "max") and not is_better(0.8, 0.7, "min")
    assert is_better(0.1, None, "max")
    assert not is_better(float("nan"), 0.1, "max")
    assert is_better(0.5, float("nan"), "max")


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        classification_metrics(np.zeros(3, int), np.zeros((4, 2)), get_task("pneumonia"))


@pytest.mark.parametrize("key", ["brain", "skin", "leukemia", "pneumonia"])
def test_primary_metric_fast_path_equals_the_full_computation(key):
    rng = np.random.default_rng(7)
    task = get_task(key)
    y = rng.integers(0, task.num_classes, 120)
    p = _probs(rng, 120, task.num_classes)
    assert primary_metric(y, p, task) == pytest.approx(classification_metrics(y, p, task)[task.metric])
