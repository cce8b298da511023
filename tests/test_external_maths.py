"""The maths of an external evaluation on arrays with known answers: calibration slope and
intercept, the decision figures, the group-disjoint recalibration split, the transport
verdict."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from orchestrator.clinical.bootstrap import bootstrap_intervals, resample_indices
from orchestrator.clinical.external import (calibration_in_the_large, calibration_slope,
                                            cases_from_answer, decision_figures, figures, logit,
                                            served_figures, split_groups, task_figures)
from orchestrator.clinical.transport import compare
from orchestrator.data.external import ClassMismatch, check_classes


def _simulate(n: int, seed: int, true_slope: float = 1.0, shift: float = 0.0):
    """Labels drawn from sigmoid(shift + true_slope * logit(p)) for predicted p."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, n)))
    truth = 1.0 / (1.0 + np.exp(-(shift + true_slope * logit(p))))
    return rng.random(n) < truth, p


def test_perfect_calibration_gives_slope_one_and_intercept_zero():
    y, p = _simulate(40_000, 0)
    a, b = calibration_slope(y, p)
    assert b == pytest.approx(1.0, abs=0.04) and a == pytest.approx(0.0, abs=0.04)
    assert calibration_in_the_large(y, p) == pytest.approx(0.0, abs=0.03)


@pytest.mark.parametrize("true_slope", [0.5, 2.0])
def test_scaled_logits_give_the_known_slope(true_slope):
    # probabilities too extreme (slope 0.5: over-confident) or too modest (2.0)
    y, p = _simulate(40_000, 1, true_slope=true_slope)
    assert calibration_slope(y, p)[1] == pytest.approx(true_slope, rel=0.06)


def test_a_shifted_risk_gives_the_known_intercept():
    y, p = _simulate(40_000, 2, shift=-1.0)  # the model over-predicts: intercept < 0
    assert calibration_in_the_large(y, p) == pytest.approx(-1.0, abs=0.05)
    assert calibration_slope(y, p)[1] == pytest.approx(1.0, abs=0.05)


def test_the_slope_is_scikit_learns_unpenalised_fit():
    y, p = _simulate(300, 3, true_slope=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000).fit(
            logit(p)[:, None], y)
    a, b = calibration_slope(y, p)
    assert (a, b) == pytest.approx((ref.intercept_[0], ref.coef_[0, 0]), abs=1e-4)


def test_separated_cases_have_no_slope():
    p = np.array([0.1, 0.2, 0.8, 0.9])
    assert np.isnan(calibration_slope(np.array([0, 0, 1, 1]), p)).all()
    assert np.isnan(calibration_in_the_large(np.ones(4), p))


def test_decision_figures_binary_and_per_class():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    called = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    got = decision_figures(y, called, ("normal", "tumour"), positive=1)
    assert got == pytest.approx({"sensitivity": 2 / 3, "specificity": 4 / 5, "ppv": 2 / 3,
                                 "npv": 4 / 5})
    got = decision_figures(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ("a", "b", "c"),
                           positive=None)
    assert got == {"recall_a": 0.5, "recall_b": 1.0, "recall_c": 0.0}


def test_figures_read_the_served_columns():
    answer = pd.DataFrame({"prob_a": [0.9, 0.2, 0.6], "prob_b": [0.1, 0.8, 0.4],
                           "decision": ["a", "b", "a"], "confidence": [0.9, 0.8, 0.6],
                           "refer": [False, False, True],
                           "prediction_set": ['["a"]', '["b"]', '["a", "b"]'],
                           "set_size": [1, 1, 2], "out_of_distribution": [False, True, False]})
    cases = cases_from_answer(answer, np.array([0, 0, 1]), ("a", "b"), positive_class="b")
    got = figures(cases)
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["refer_coverage"] == pytest.approx(2 / 3)
    assert got["accuracy_accepted"] == pytest.approx(1 / 2)
    assert got["set_coverage"] == pytest.approx(2 / 3)
    assert got["set_size_mean"] == pytest.approx(4 / 3)
    assert got["ood_flagged"] == pytest.approx(1 / 3)
    assert got["sensitivity"] == 0.0 and got["specificity"] == 0.5


def test_the_task_figures_scored_at_once_complete_the_served_ones():
    """The external bootstrap scores the task's metrics of every resample at once and the
    served answers' figures one resample at a time: the rows `figures` per resample gives."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(2), 90)
    decision = np.where(probs[:, 1] > 0.4, "b", "a")
    answer = pd.DataFrame({"prob_a": probs[:, 0], "prob_b": probs[:, 1], "decision": decision,
                           "confidence": probs.max(axis=1), "refer": probs.max(axis=1) < 0.6})
    y = (rng.random(90) < probs[:, 1]).astype(int)
    cases = cases_from_answer(answer, y, ("a", "b"), positive_class="b")
    draws = resample_indices(y, rng.integers(0, 40, 90), 100, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_by_one = bootstrap_intervals(lambda idx: figures(cases, idx), 90, draws)
        split = bootstrap_intervals(lambda idx: served_figures(cases, idx), 90, draws,
                                    weighted=lambda counts: task_figures(cases, counts))
    assert list(split.metric) == list(one_by_one.metric) == list(figures(cases))
    assert (split.resamples == one_by_one.resamples).all()
    np.testing.assert_allclose(split[["point", "low", "high"]].to_numpy(),
                               one_by_one[["point", "low", "high"]].to_numpy(), rtol=1e-12)


def test_recalibration_split_keeps_every_group_on_one_side():
    groups = np.repeat([f"p{i}" for i in range(30)], 3)
    calibrate, judge = split_groups(groups, 0.3, seed=4)
    assert calibrate.sum() == 27 and (calibrate ^ judge).all()
    assert not set(groups[calibrate]) & set(groups[judge])
    assert (split_groups(groups, 0.3, seed=4)[0] == calibrate).all()  # seeded
    assert not (split_groups(groups, 0.3, seed=5)[0] == calibrate).all()
    with pytest.raises(ValueError):
        split_groups(groups, 1.0, seed=0)


def _accuracy_of(correct: np.ndarray):
    return lambda idx: float(correct[idx].mean())


@pytest.mark.parametrize("external_rate, verdict", [(0.88, "transported"),
                                                    (0.60, "did not transport")])
def test_transport_verdict(external_rate, verdict):
    rng = np.random.default_rng(5)
    internal = rng.permutation(np.arange(200) < 180)  # exactly 0.90
    external = rng.permutation(np.arange(200) < int(external_rate * 200))
    labels = rng.integers(0, 2, 200)  # the strata: classes, not correctness
    res_e = resample_indices(labels, None, 400, seed=1)
    res_i = resample_indices(labels, None, 400, seed=2)
    t = compare("accuracy", "max", _accuracy_of(external), 200, res_e, 200,
                _accuracy_of(internal), 200, res_i, 200)
    assert t.verdict == verdict and t.line.startswith(f"{verdict}: external accuracy ")
    assert t.difference.point == pytest.approx(external.mean() - internal.mean())
    assert t.difference.low < t.difference.point < t.difference.high
    # both uncertainties are drawn: wider than the external interval alone
    assert (t.difference.high - t.difference.low) > (t.external.high - t.external.low)


def test_transport_gives_no_verdict_on_too_few_groups():
    correct = np.ones(12, dtype=bool)
    correct[:3] = False
    res = resample_indices(np.arange(12) % 2, None, 100, seed=0)
    t = compare("accuracy", "max", _accuracy_of(correct), 12, res, 12,
                _accuracy_of(correct), 12, res, 12)
    assert t.verdict == "no verdict"
    assert t.line.startswith("cannot say whether performance transported (external test holds "
                             "12 groups and internal test holds 12 groups (< 20))")


def test_mismatched_classes_name_both_lists():
    check_classes(["b", "a"], ("a", "b"))
    with pytest.raises(ClassMismatch, match=r"the data's classes \(disc, ring\) are not the "
                                            r"model's \(glioma, meningioma, pituitary\)"):
        check_classes(["ring", "disc"], ("glioma", "meningioma", "pituitary"))


def test_transport_gives_no_verdict_when_a_side_has_a_zero_width_interval():
    # a model that calls one class: its accuracy is the class share in every stratified
    # resample, on both sides; the difference sits still at 0, which is no evidence
    labels = np.arange(40) % 2
    calls_one = labels == 0
    res_e = resample_indices(labels, None, 200, seed=1)
    res_i = resample_indices(labels, None, 200, seed=2)
    t = compare("accuracy", "max", _accuracy_of(calls_one), 40, res_e, 40,
                _accuracy_of(calls_one), 40, res_i, 40)
    assert t.verdict == "no verdict" and np.isnan(t.difference.low)
    assert t.line.startswith("cannot say whether performance transported (external zero-width "
                             "interval: no interval): external accuracy 0.500 [no interval]")


def test_external_data_is_read_whole_with_copies_one_group(tmp_path):
    import shutil

    from orchestrator.data.external import read_external
    from orchestrator.data.phantoms import write_phantom
    from tasks import get_task

    task = get_task("brain")
    data = write_phantom(task, tmp_path / "site", per_class=6, seed=3)
    original = sorted((data / "Training" / "glioma").glob("*.jpg"))[0]
    copy = data / "Testing" / "glioma" / "Te-gl_copy.jpg"
    shutil.copy(original, copy)  # a sweep would leave the training twin out; here both stay
    said: list[str] = []
    site = read_external(task, data, ("pituitary", "glioma", "meningioma"), log=said.append)
    assert len(site.table) == 3 * 6 + 1 and set(site.table["label"]) == set(task.classes)
    groups = site.table.set_index("path")["group"]
    assert groups[str(original)] == groups[str(copy)] and site.duplicate_pairs >= 1
    assert site.table["group"].nunique() == 3 * 6
    assert any("duplicate image pair(s) verified" in line for line in said)
    # labels in the model's class order, by name
    y = site.labels(("pituitary", "glioma", "meningioma"))
    assert (y[site.table["label"].to_numpy() == "glioma"] == 1).all()
    with pytest.raises(ClassMismatch):
        read_external(task, data, ("glioma", "meningioma"), log=said.append)
