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


# --- several heads ---------------------------------------------------------------------------

def _multihead_truth(n: int = 60, seed: int = 0):
    from tasks.multihead import MULTIHEAD
    rng = np.random.default_rng(seed)
    y = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n), rng.uniform(20, 60, n)], axis=1)
    return MULTIHEAD, y.astype(np.float64)


def _perfect(y):
    return np.concatenate([np.eye(4)[y[:, 0].astype(int)], np.eye(3)[y[:, 1].astype(int)],
                           y[:, 2:3]], axis=1)


def test_mean_skill_is_one_when_perfect_and_zero_for_trivial_answers():
    from orchestrator.metrics import mean_skill, multihead_metrics
    task, y = _multihead_truth()
    assert mean_skill(y, _perfect(y), task) == pytest.approx(1.0)
    # one class for everything and the mean for every size: chance on each head
    trivial = np.concatenate([np.tile(np.eye(4)[0], (len(y), 1)), np.tile(np.eye(3)[1],
                              (len(y), 1)), np.full((len(y), 1), y[:, 2].mean())], axis=1)
    assert mean_skill(y, trivial, task) == pytest.approx(0.0, abs=1e-9)
    scores = multihead_metrics(y, trivial, task)
    assert scores["shape_balanced_accuracy"] == pytest.approx(0.25)
    assert scores["texture_skill"] == pytest.approx(0.0)
    assert scores["size_r2"] == pytest.approx(0.0, abs=1e-9)
    assert scores["mean_skill"] == pytest.approx(0.0, abs=1e-9)
    assert primary_metric(y, trivial, task) == scores["mean_skill"]
    assert classification_metrics(y, trivial, task) == scores


def test_regression_metrics_are_in_the_targets_unit():
    from orchestrator.metrics import multihead_metrics
    task, y = _multihead_truth()
    pred = _perfect(y)
    pred[:, 7] += np.where(np.arange(len(y)) % 2 == 0, 2.0, -2.0)  # off by 2 mm either way
    scores = multihead_metrics(y, pred, task)
    assert scores["size_mae"] == pytest.approx(2.0) and scores["size_rmse"] == pytest.approx(2.0)
    assert scores["size_r2"] == pytest.approx(1 - 4.0 / np.var(y[:, 2]))
    assert scores["shape_accuracy"] == 1.0 and scores["mean_skill"] < 1.0
    assert set(k.split("_")[0] for k in scores) >= {"shape", "texture", "size", "mean", "loss"}
