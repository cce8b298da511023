"""The served decision, its confidence and the refer rule (orchestrator/clinical/referral.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from orchestrator.clinical.referral import (CANDIDATE_CUTS, REFER_ALL, accepted,
                                            accuracy_lower_bound, cases_needed,
                                            choose_refer_cut, decide, referral_figures)

ALPHA = 0.05 / len(CANDIDATE_CUTS)  # each cut's level at the default refer confidence


def test_binary_decision_uses_the_threshold_and_confidence_is_the_decided_class():
    p = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    decision, confidence = decide(p, threshold=0.25, positive_index=1)
    assert decision.tolist() == [0, 1, 1]  # 0.3 >= 0.25: positive, although argmax says 0
    np.testing.assert_allclose(confidence, [0.9, 0.3, 0.8])
    decision, _ = decide(p, threshold=0.25, positive_index=0)
    assert decision.tolist() == [0, 0, 1]
    assert decide(p, None, None)[0].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="two classes"):
        decide(np.full((2, 3), 1 / 3), 0.5, 1)


def _cases(groups: list[tuple[float, int, int]]):
    """(confidence, cases, of which right) -> y, decision, confidence."""
    confidence = np.concatenate([np.full(n, c) for c, n, _ in groups])
    right = np.concatenate([np.arange(n) < r for _, n, r in groups])
    y = np.zeros(len(right), dtype=int)
    return y, np.where(right, 0, 1), confidence


def test_the_cut_is_the_lowest_candidate_whose_simultaneous_bound_reaches_the_target():
    # 300 sure cases all right, 100 unsure ones half right: every candidate from 0.7 to 0.99
    # accepts the same 300, so the lowest of them is chosen; 0.6 would take the 100 too.
    y, decision, confidence = _cases([(0.995, 300, 300), (0.65, 100, 50)])
    r = choose_refer_cut(y, decision, confidence, target_accuracy=0.95)
    assert r.cut == 0.7 and r.coverage == pytest.approx(0.75) and r.accuracy == 1.0
    assert r.lower_bound == pytest.approx(beta.ppf(ALPHA, 300, 1))  # = ALPHA ** (1 / 300)
    assert r.lower_bound >= 0.95 and r.cases == 400 and r.confidence_level == 0.95
    assert referral_figures(y, decision, confidence, r.cut) == {
        "coverage": pytest.approx(0.75), "accuracy_accepted": 1.0}
    assert accepted(confidence, r.cut).sum() == 300
    # 350 of 400 right (0.875): bound 0.821, so a target of 0.8 accepts every case, 0.85 not
    assert choose_refer_cut(y, decision, confidence, 0.8).cut == 0.0
    assert choose_refer_cut(y, decision, confidence, 0.85).cut == 0.7


def test_a_handful_of_right_cases_backs_no_cut():
    """The demo's failure: the 2 most confident of 240 cases were right, so the point rule
    accepted them. A perfect record must be long enough for its bound to reach the target."""
    need = cases_needed(0.95)
    assert need == 120  # 0.95 ** 120 < 0.05 / 23 < 0.95 ** 119
    y, decision, confidence = _cases([(0.999, 2, 2), (0.8, 238, 150)])
    r = choose_refer_cut(y, decision, confidence, 0.95)
    assert r.cut == REFER_ALL and r.refers_everything and r.coverage == 0.0
    assert np.isnan(r.lower_bound) and not accepted(np.array([1.0]), r.cut).any()
    line = r.unreachable("out-of-fold")
    assert line.startswith("no confidence level supports accuracy 0.95 on these 240 "
                           "out-of-fold cases") and "lower the target or add data" in line
    assert "at least 120 accepted cases" in line
    for n, supported in ((need - 1, False), (need, True)):
        y, decision, confidence = _cases([(0.999, n, n)])
        assert (not choose_refer_cut(y, decision, confidence, 0.95).refers_everything) \
            == supported


def test_the_bound_is_clopper_pearson_and_the_options_are_checked():
    assert accuracy_lower_bound(0, 10, 0.05) == 0.0 and accuracy_lower_bound(0, 0, 0.05) == 0.0
    # the exact one-sided bound: P(X >= 9 | n=10, p=bound) = alpha
    bound = accuracy_lower_bound(9, 10, 0.05)
    assert beta.sf(bound, 9, 2) == pytest.approx(0.95) and 0.6 < bound < 0.7
    with pytest.raises(ValueError, match="target accuracy"):
        choose_refer_cut(np.array([0]), np.array([0]), np.array([0.9]), 1.5)
    with pytest.raises(ValueError, match="refer confidence"):
        choose_refer_cut(np.array([0]), np.array([0]), np.array([0.9]), 0.9, 1.0)


def _point_rule(correct: np.ndarray, confidence: np.ndarray, target: float) -> float:
    """The rule before the guarantee: the lowest confidence whose accepted cases' empirical
    accuracy reaches the target."""
    order = np.argsort(-confidence)
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(running >= target)
    return float(confidence[order][ok[-1]]) if len(ok) else REFER_ALL


def test_the_guarantee_holds_over_repeated_held_out_sets_where_the_point_rule_does_not():
    """A calibrated model whose cases are mostly sure: confidence c = 1 - u**3 / 2 with u ~ U(0, 1)
    and P(right | c) = c, so the cases accepted at cut t >= 0.5 are right with probability
    1 - (1 - t) / 4: 0.95 from t = 0.8 up, where 74% of cases are accepted. Over 300 held-out
    sets of 1,000 cases, the chosen cut's true accuracy reaches 0.95 in at least 95% of them;
    the point rule's falls short far more often."""
    rng = np.random.default_rng(7)
    target, repeats, n = 0.95, 300, 1000

    def true_accuracy(cut: float) -> float:
        return 1 - (1 - max(cut, 0.5)) / 4

    held, held_point, coverage = [], [], []
    for _ in range(repeats):
        confidence = 1 - rng.random(n) ** 3 / 2
        correct = rng.random(n) < confidence
        y = np.zeros(n, dtype=int)
        r = choose_refer_cut(y, np.where(correct, 0, 1), confidence, target)
        held.append(r.refers_everything or true_accuracy(r.cut) >= target)
        coverage.append(r.coverage)
        point = _point_rule(correct, confidence, target)
        held_point.append(point > 1.0 or true_accuracy(point) >= target)
    assert np.mean(held) >= 0.95
    assert np.mean(held_point) < 0.8  # the old rule falls short of the stated share
    assert np.median(coverage) > 0.4  # and the guarantee still accepts most sure cases
