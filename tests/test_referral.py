"""The served decision, its confidence and the refer cut (orchestrator/clinical/referral.py)."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.clinical.referral import (REFER_ALL, accepted, choose_refer_cut, decide,
                                            referral_figures)


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


def test_the_cut_is_the_largest_coverage_that_reaches_the_target():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    y = np.zeros(8, dtype=int)
    decision = np.where(correct, 0, 1)
    r = choose_refer_cut(y, decision, confidence, target_accuracy=0.95)
    assert r.cut == 0.7 and r.coverage == pytest.approx(5 / 8) and r.accuracy == 1.0
    # 6/7 = 0.857 reaches 0.85 at confidence 0.5, past the wrong case at 0.6
    r = choose_refer_cut(y, decision, confidence, target_accuracy=0.85)
    assert r.cut == 0.5 and r.coverage == pytest.approx(7 / 8)
    figures = referral_figures(y, decision, confidence, r.cut)
    assert figures == {"coverage": pytest.approx(7 / 8), "accuracy_accepted": pytest.approx(6 / 7)}
    assert accepted(confidence, r.cut).sum() == 7


def test_ties_are_accepted_or_referred_together():
    confidence = np.array([0.9, 0.8, 0.8, 0.8])
    y = np.zeros(4, dtype=int)
    decision = np.array([0, 0, 1, 0])  # one of the tied cases is wrong
    r = choose_refer_cut(y, decision, confidence, target_accuracy=0.9)
    assert r.cut == 0.9 and r.coverage == 0.25  # a cut at 0.8 would accept all three ties


def test_no_cut_reaching_the_target_refers_everything():
    r = choose_refer_cut(np.array([0, 1]), np.array([1, 0]), np.array([0.9, 0.8]), 0.95)
    assert r.cut == REFER_ALL and r.refers_everything and r.coverage == 0.0
    assert not accepted(np.array([1.0]), r.cut).any()
    with pytest.raises(ValueError, match="target accuracy"):
        choose_refer_cut(np.array([0]), np.array([0]), np.array([0.9]), 1.5)
