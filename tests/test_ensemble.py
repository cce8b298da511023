"""Ensemble selection on validation probabilities whose right answer is known by construction."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.ensemble import (Ensemble, best_single, caruana_select, task_scorer,
                                   top_k_soft_vote)
from orchestrator.metrics import log_loss
from tasks import get_task

ACCURACY, MAX = task_scorer(get_task("brain"))  # 3 classes, accuracy, max
AUC, _ = task_scorer(get_task("pneumonia"))  # 2 classes, ROC-AUC, max
Y3 = np.array([0, 1, 2] * 4)  # 12 brain labels, every class present


def _predicting(y: np.ndarray, correct: list[bool], conf: float = 0.8, n_classes: int = 3):
    """`conf` on the true class where `correct`, else on the next class; the rest spread evenly."""
    predicted = np.where(correct, y, (y + 1) % n_classes)
    probs = np.full((len(y), n_classes), (1.0 - conf) / (n_classes - 1))
    probs[np.arange(len(y)), predicted] = conf
    return probs


def _true_class(y: np.ndarray, p_true: list[float]) -> np.ndarray:
    """`p_true` on the true class, the rest on the next class (third class 0): argmax is right
    exactly when the (mean) true-class probability is above 1/2."""
    probs = np.zeros((len(y), 3))
    probs[np.arange(len(y)), y] = p_true
    probs[np.arange(len(y)), (y + 1) % 3] = 1.0 - np.asarray(p_true)
    return probs


def _right_on(*indices: int, n: int = 12) -> list[bool]:
    return [i in indices for i in range(n)]


def test_task_scorer_is_the_task_metric_and_mode():
    assert MAX == "max"
    assert ACCURACY(Y3, _predicting(Y3, _right_on(0, 1, 2))) == pytest.approx(0.25)


def test_predict_is_the_weighted_mean_and_weights_sum_to_one():
    rng = np.random.default_rng(0)
    probs = {n: rng.dirichlet(np.ones(3), 12) for n in ("a", "b", "c")}
    ens = Ensemble(members=("b", "a"), weights=(0.75, 0.25), score=0.0, method="manual")
    assert np.allclose(ens.predict(probs), 0.75 * probs["b"] + 0.25 * probs["a"])
    chosen = caruana_select(probs, Y3, ACCURACY, MAX)
    assert sum(chosen.weights) == pytest.approx(1.0)
    manual = sum(w * probs[m] for m, w in zip(chosen.members, chosen.weights))
    assert np.allclose(chosen.predict(probs), manual)
    assert ACCURACY(Y3, chosen.predict(probs)) == pytest.approx(chosen.score)


def test_ensemble_record_rejects_inconsistent_weights_and_missing_members():
    with pytest.raises(ValueError, match="sum to 1"):
        Ensemble(members=("a", "b"), weights=(0.5, 0.6), score=0.0, method="manual")
    with pytest.raises(ValueError, match="repeat"):
        Ensemble(members=("a", "a"), weights=(0.5, 0.5), score=0.0, method="manual")
    ens = Ensemble(members=("a",), weights=(1.0,), score=0.0, method="manual")
    with pytest.raises(ValueError, match="'a'"):
        ens.predict({"b": np.ones((2, 2)) / 2})


def test_best_single_picks_the_most_accurate():
    probs = {"weak": _predicting(Y3, _right_on(0, 1, 2, 3)),
             "strong": _predicting(Y3, _right_on(*range(10))),
             "middle": _predicting(Y3, _right_on(*range(7)))}
    ens = best_single(probs, Y3, ACCURACY, MAX)
    assert (ens.members, ens.weights, ens.method) == (("strong",), (1.0,), "best_single")
    assert ens.score == pytest.approx(10 / 12)


def test_best_single_ties_go_to_the_lower_log_loss_then_the_first_name():
    same = _right_on(*range(9))
    probs = {"zeta": _predicting(Y3, same), "alpha": _predicting(Y3, same, conf=0.6),
             "beta": _predicting(Y3, _right_on(0))}
    # zeta and alpha tie on accuracy; zeta's sharper right answers give it the lower log-loss
    assert log_loss(Y3, probs["zeta"]) < log_loss(Y3, probs["alpha"])
    assert best_single(probs, Y3, ACCURACY, MAX).members == ("zeta",)
    twins = {"zeta": probs["zeta"], "alpha": probs["zeta"].copy(), "beta": probs["beta"]}
    assert best_single(twins, Y3, ACCURACY, MAX).members == ("alpha",)  # a full tie: the name
    assert best_single(dict(reversed(twins.items())), Y3, ACCURACY, MAX).members == ("alpha",)


def test_top2_soft_vote_averages_the_two_best_singles_by_auc():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 50)
    probs = {}
    for name, noise in (("n0.2", 0.2), ("n0.6", 0.6), ("n1.5", 1.5), ("n3.0", 3.0)):
        logit = (2 * y - 1) + noise * rng.standard_normal(len(y))
        p1 = 1 / (1 + np.exp(-logit))
        probs[name] = np.column_stack([1 - p1, p1])
    ens = top_k_soft_vote(probs, y, AUC, "max", k=2)
    assert ens.members == ("n0.2", "n0.6")
    assert ens.weights == (0.5, 0.5)
    assert ens.score == pytest.approx(AUC(y, (probs["n0.2"] + probs["n0.6"]) / 2))


def test_complementary_models_beat_the_single_best_so_caruana_picks_both():
    """Each is confidently right on its half and hesitantly wrong on the other: the mean of the
    two is right everywhere, either alone is right on half."""
    first, second = [0.9] * 6 + [0.4] * 6, [0.4] * 6 + [0.9] * 6
    probs = {"left": _true_class(Y3, first), "right": _true_class(Y3, second),
             "wrong": _true_class(Y3, [0.3] * 12)}
    single = best_single(probs, Y3, ACCURACY, MAX)
    ens = caruana_select(probs, Y3, ACCURACY, MAX)
    assert single.score == pytest.approx(0.5)
    assert ens.score == pytest.approx(1.0)
    assert ens.members == ("left", "right")
    assert ens.weights == pytest.approx((0.5, 0.5))
    assert ens.trajectory[:2] == (("left", 0.5), ("right", 1.0))
    assert len(ens.trajectory) == 1 + 25  # ran every iteration, not stopping at the plateau


def test_when_every_addition_hurts_caruana_returns_the_best_model_alone():
    """The best is right on 9 of 12 by a thin margin; the others are confidently wrong on half
    of those, so every mix loses accuracy and only the best itself keeps it."""
    best = _true_class(Y3, [0.55] * 9 + [0.3] * 3)
    spoiler = _true_class(Y3, [0.95] * 4 + [0.05] * 5 + [0.3] * 3)
    other = _true_class(Y3, [0.05] * 4 + [0.95] * 5 + [0.3] * 3)
    probs = {"best": best, "a_spoiler": spoiler, "b_other": other}
    ens = caruana_select(probs, Y3, ACCURACY, MAX)
    assert (ens.members, ens.weights) == (("best",), (1.0,))
    assert ens.score == pytest.approx(0.75)
    assert {name for name, _ in ens.trajectory} == {"best"}


def test_a_tie_on_accuracy_is_broken_by_log_loss():
    """Neither addition changes an argmax, so both tie with repeating the best on accuracy.
    The hesitant model softens the best's confident mistakes (lower log-loss): it joins. The
    sure one sharpens them (higher log-loss): the best stays alone."""
    best = _true_class(Y3, [0.9] * 9 + [0.2] * 3)
    weak = _true_class(Y3, [0.45] * 6 + [0.55] * 6)
    sure = _true_class(Y3, [0.95] * 9 + [0.05] * 3)
    for other in (weak, sure):
        assert ACCURACY(Y3, (best + other) / 2) == ACCURACY(Y3, best)
    joined = caruana_select({"best": best, "a_weak": weak}, Y3, ACCURACY, MAX)
    assert set(joined.members) == {"best", "a_weak"} and joined.score == ACCURACY(Y3, best)
    assert log_loss(Y3, joined.predict({"best": best, "a_weak": weak})) < log_loss(Y3, best)
    alone = caruana_select({"best": best, "a_sure": sure}, Y3, ACCURACY, MAX)
    assert (alone.members, alone.weights) == (("best",), (1.0,))


def test_a_tie_on_the_trajectory_keeps_the_point_with_fewer_members():
    """A+B is perfect; repeating A or B breaks it, adding C keeps it perfect: the trajectory
    goes on to C, and the answer is the earlier, smaller A+B."""
    p_true = {"A": [0.9] * 3 + [0.2] * 2 + [0.9] * 3,  # types: A-side x3, B-side x2, both x3
              "B": [0.2] * 3 + [0.9] * 2 + [0.9] * 3,
              "C": [0.6] * 5 + [0.0] * 3}
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probs = {n: _true_class(y, p) for n, p in p_true.items()}
    ens = caruana_select(probs, y, ACCURACY, MAX)
    assert ens.trajectory[:3] == (("A", 0.75), ("B", 1.0), ("C", 1.0))
    assert (ens.members, ens.score) == (("A", "B"), 1.0)
    assert ens.weights == pytest.approx((0.5, 0.5))


def test_log_loss_wants_two_thirds_one_third_so_caruana_picks_a_model_twice():
    """A is sure and right on two samples of three, B on the third: log-loss is lowest at
    weights (2/3, 1/3), which only a repeated selection of A reaches."""
    y = np.array([0, 1, 1, 0, 1, 0])
    a_right = np.array([True, True, False, True, True, False])
    p_true = {"A": np.where(a_right, 0.99, 0.01), "B": np.where(a_right, 0.01, 0.99)}
    probs = {n: np.column_stack([np.where(y == 0, p, 1 - p), np.where(y == 1, p, 1 - p)])
             for n, p in p_true.items()}
    ens = caruana_select(probs, y, log_loss, "min")
    assert [name for name, _ in ens.trajectory[:3]] == ["A", "B", "A"]
    half, two_thirds = ens.trajectory[1][1], ens.trajectory[2][1]
    assert two_thirds < half < ens.trajectory[0][1]
    assert ens.members == ("A", "B")
    assert ens.weights == pytest.approx((2 / 3, 1 / 3))
    assert ens.score == pytest.approx(two_thirds)
    assert ens.score == pytest.approx(log_loss(y, ens.predict(probs)))


def test_max_members_caps_distinct_members():
    first, second = [0.9] * 6 + [0.4] * 6, [0.4] * 6 + [0.9] * 6
    probs = {"left": _true_class(Y3, first), "right": _true_class(Y3, second)}
    alone = caruana_select(probs, Y3, ACCURACY, MAX, max_members=1)
    assert (alone.members, alone.score) == (("left",), 0.5)
    rng = np.random.default_rng(2)
    many = {f"m{i}": rng.dirichlet(np.ones(3), 12) for i in range(6)}
    capped = caruana_select(many, Y3, ACCURACY, MAX, max_members=2)
    assert len(capped.members) <= 2
    assert len({name for name, _ in capped.trajectory}) <= 2


def test_init_size_starts_from_the_best_singles():
    probs = {"weak": _predicting(Y3, _right_on(0, 1, 2, 3)),
             "strong": _predicting(Y3, _right_on(*range(10))),
             "middle": _predicting(Y3, _right_on(*range(7)))}
    ens = caruana_select(probs, Y3, ACCURACY, MAX, init_size=2, max_iterations=0)
    assert ens.members == ("strong", "middle")
    assert [name for name, _ in ens.trajectory] == ["strong", "middle"]


def test_a_candidate_with_nan_probabilities_is_skipped_with_a_warning():
    probs = {"good": _predicting(Y3, _right_on(*range(8))),
             "broken": np.full((12, 3), np.nan)}
    with pytest.warns(RuntimeWarning, match="'broken'"):
        ens = caruana_select(probs, Y3, ACCURACY, MAX)
    assert ens.members == ("good",)
    assert "broken" not in {name for name, _ in ens.trajectory}


def test_a_candidate_whose_score_is_nan_is_skipped_with_a_warning():
    def unclipped_log_loss(y, probs):  # NaN on negative probabilities
        with np.errstate(invalid="ignore"):
            return float(-np.mean(np.log(probs[np.arange(len(y)), y])))

    good = _predicting(Y3, _right_on(*range(8)))
    probs = {"good": good, "negative": good - 0.5}
    with pytest.warns(RuntimeWarning, match="'negative'.*NaN"):
        ens = caruana_select(probs, Y3, unclipped_log_loss, "min")
    assert ens.members == ("good",)


def test_invalid_inputs_raise_value_errors_that_name_the_problem():
    good = _predicting(Y3, _right_on(*range(8)))
    with pytest.raises(ValueError, match="no candidate probabilities"):
        caruana_select({}, Y3, ACCURACY, MAX)
    with pytest.raises(ValueError, match="'short'.*shape"):
        caruana_select({"good": good, "short": good[:10]}, Y3, ACCURACY, MAX)
    with pytest.raises(ValueError, match="'good'.*shape"):
        best_single({"good": good}, Y3[:10], ACCURACY, MAX)
    with pytest.raises(ValueError, match="mode"):
        best_single({"good": good}, Y3, ACCURACY, "maximise")
    with pytest.raises(ValueError, match="finite validation score"), pytest.warns(RuntimeWarning):
        best_single({"nan": np.full((12, 3), np.nan)}, Y3, ACCURACY, MAX)
    with pytest.raises(ValueError, match="init_size"):
        caruana_select({"good": good}, Y3, ACCURACY, MAX, init_size=2)
    with pytest.raises(ValueError, match="max_members"):
        caruana_select({"good": good}, Y3, ACCURACY, MAX, init_size=2, max_members=1)
    with pytest.raises(ValueError, match="k=3"):
        top_k_soft_vote({"good": good, "again": good}, Y3, ACCURACY, MAX, k=3)


SCORERS = {"accuracy": (ACCURACY, "max", 3), "auc": (AUC, "max", 2), "log_loss": (log_loss, "min", 2)}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_models=st.integers(1, 4),
       n_samples=st.integers(4, 30), scorer_name=st.sampled_from(sorted(SCORERS)))
def test_caruana_never_does_worse_than_the_best_single(seed, n_models, n_samples, scorer_name):
    scorer, mode, n_classes = SCORERS[scorer_name]
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n_samples)])
    probs = {f"m{i}": rng.dirichlet(np.ones(n_classes) * 0.5, len(y)) for i in range(n_models)}
    single = best_single(probs, y, scorer, mode)
    ens = caruana_select(probs, y, scorer, mode, max_iterations=8)
    # never worse, up to the 1e-12 within which selection calls two scores a tie (and prefers
    # the lower loss): an ensemble's AUC can differ from its best member's in the last bit
    assert (ens.score >= single.score - 1e-12) if mode == "max" else (
        ens.score <= single.score + 1e-12)
    assert sum(ens.weights) == pytest.approx(1.0)
    assert set(ens.members) <= set(probs)
    assert len(set(ens.members)) == len(ens.members)
    assert len(ens.trajectory) == 1 + 8


def test_selection_on_a_multihead_task_scores_every_head_at_once():
    """Candidates good on different heads: the ensemble of both beats either alone on
    mean_skill; ties break on the multi-head loss, never on a single head's log loss."""
    from orchestrator.ensemble.selection import caruana_select, task_scorer
    from orchestrator.metrics import multihead_metrics, task_loss
    from tasks.multihead import MULTIHEAD

    rng = np.random.default_rng(0)
    n = 80
    y = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n), rng.uniform(20, 60, n)], 1)
    truth = np.concatenate([np.eye(4)[y[:, 0].astype(int)], np.eye(3)[y[:, 1].astype(int)],
                            y[:, 2:3]], axis=1)
    flat = np.concatenate([np.full((n, 4), 0.25), np.full((n, 3), 1 / 3),
                           np.full((n, 1), y[:, 2].mean())], axis=1)
    good_shape = flat.copy()
    good_shape[:, :4] = 0.7 * truth[:, :4] + 0.3 * 0.25
    good_rest = flat.copy()
    good_rest[:, 4:] = 0.7 * truth[:, 4:] + 0.3 * flat[:, 4:]
    scorer, mode = task_scorer(MULTIHEAD)
    assert scorer.loss(y, truth) == pytest.approx(task_loss(y, truth, MULTIHEAD))
    assert task_loss(y, good_rest, MULTIHEAD) == pytest.approx(
        multihead_metrics(y, good_rest, MULTIHEAD)["loss"])
    ens = caruana_select({"shape": good_shape, "rest": good_rest}, y, scorer, mode,
                         max_iterations=6)
    assert set(ens.members) == {"shape", "rest"}
    assert ens.score > max(scorer(y, good_shape), scorer(y, good_rest))
