"""Conformal prediction sets (`orchestrator.clinical.conformal`): the vectorised numpy against a
brute-force loop written from the definitions, the finite-sample quantile at its edge, and the
coverage guarantee checked by simulation on a model whose probabilities are the truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.clinical.conformal import (EVERY_CLASS, SetFit, conformal_quantile,
                                             coverage_range, fit_sets, in_set, mass_above,
                                             min_cases, near_quantile, scores, set_figures,
                                             set_labels, set_text)

ALPHA = 0.10


def _calibrated(n: int, c: int, rng, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """A known model: softmax of normal logits, and labels drawn from those probabilities (so
    the probabilities are exactly calibrated)."""
    logits = rng.normal(size=(n, c)) * spread
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), c - 1)
    return p, y


# --- brute force, from the definitions, one case and one class at a time -------------------------
def _ranked(row) -> list[int]:
    """Classes, most probable first; ties by class order."""
    return sorted(range(len(row)), key=lambda k: (-row[k], k))


def _brute_score(row, label) -> float:
    total = 0.0
    for k in _ranked(row):
        if k == label:
            return total
        total += row[k]
    raise AssertionError("label not among the classes")


def _brute_quantile(values, coverage) -> float:
    n = len(values)
    rank = math.ceil(round((n + 1) * coverage, 9))
    return EVERY_CLASS if rank > n else sorted(values)[rank - 1]


def _brute_set(row, quantile) -> list[int]:
    """Marginal: the classes in order of probability until their cumulative probability first
    exceeds the quantile, that class included."""
    chosen, total = [], 0.0
    for k in _ranked(row):
        chosen.append(k)
        total += row[k]
        if total > quantile + 1e-9:
            break
    return chosen


def _brute_conditional_set(row, quantiles) -> list[int]:
    """Class-conditional: each class in when the mass above it is at most its own quantile."""
    return [k for k in _ranked(row) if _brute_score(row, k) <= quantiles[k] + 1e-9]


@pytest.mark.parametrize("c", [2, 3, 5])
def test_the_numpy_agrees_with_a_brute_force_loop(c):
    rng = np.random.default_rng(c)
    p, y = _calibrated(120, c, rng)
    p[:5, 1] = p[:5, 0]  # ties between the first two classes
    p /= p.sum(axis=1, keepdims=True)
    above = mass_above(p)
    for i in range(len(p)):
        for k in range(c):
            assert above[i, k] == pytest.approx(_brute_score(p[i], k), abs=1e-12)
    s = scores(p, y)
    np.testing.assert_allclose(s, [_brute_score(r, t) for r, t in zip(p, y)], atol=1e-12)
    held, new = slice(0, 80), slice(80, None)
    fit = fit_sets(p[held], y[held], 0.9)
    assert fit.quantiles == (pytest.approx(_brute_quantile(list(s[held]), 0.9), abs=1e-12),)
    labels = set_labels(p[new], fit, [f"c{k}" for k in range(c)])
    assert labels == [[f"c{k}" for k in _brute_set(r, fit.quantiles[0])] for r in p[new]]
    conditional = fit_sets(p[held], y[held], 0.8, conditional=True)
    want = [_brute_quantile([v for v, t in zip(s[held], y[held]) if t == k], 0.8)
            for k in range(c)]
    np.testing.assert_allclose(conditional.quantiles, want, atol=1e-12)
    assert conditional.cases == tuple(int(np.sum(y[held] == k)) for k in range(c))
    member = in_set(p[new], conditional)
    for row, keep in zip(p[new], member):
        assert sorted(_brute_conditional_set(row, want)) == list(np.flatnonzero(keep))


def test_every_set_holds_the_most_probable_class_and_the_text_is_json():
    rng = np.random.default_rng(1)
    p, y = _calibrated(200, 4, rng, spread=3.0)
    fit = SetFit(0.9, (0.0,), (200,))  # the smallest quantile: the top class alone
    member = in_set(p, fit)
    assert (member.sum(axis=1) == 1).all() and member[np.arange(200), p.argmax(1)].all()
    assert set_text(["glioma", "meningioma"]) == '["glioma", "meningioma"]'
    assert set_labels(np.array([[0.2, 0.5, 0.3]]), SetFit(0.9, (0.6,), (10,)),
                      ["a", "b", "c"]) == [["b", "c"]]  # 0.5 + 0.3 = 0.8 > 0.6: c crosses
    assert set_labels(np.array([[0.2, 0.5, 0.3]]), SetFit(0.9, (0.4,), (10,)),
                      ["a", "b", "c"]) == [["b"]]  # 0.5 > 0.4 at b, the crossing class


def test_the_quantile_rank_and_too_few_cases_are_said_not_hidden():
    assert min_cases(0.90) == 9 and min_cases(0.95) == 19 and min_cases(0.5) == 1
    nine = np.linspace(0.0, 0.8, 9)
    assert conformal_quantile(nine, 0.9) == 0.8  # ceil(10 * 0.9) = 9: the largest of nine
    assert conformal_quantile(nine[:8], 0.9) == EVERY_CLASS  # ceil(9 * 0.9) = 9 > 8
    assert conformal_quantile(np.arange(20) / 20, 0.9) == 0.9  # ceil(21 * 0.9) = 19th
    p = np.full((8, 3), 1 / 3)
    fit = fit_sets(p, np.arange(8) % 3, 0.9)
    assert fit.every_class == (0,) and in_set(p, fit).all()
    rare = fit_sets(np.tile([[0.5, 0.3, 0.2]], (30, 1)), np.r_[np.zeros(25), np.ones(3),
                                                                np.full(2, 2)].astype(int),
                    0.9, conditional=True)
    assert rare.every_class == (1, 2) and rare.cases == (25, 3, 2)
    assert in_set(np.array([[0.9, 0.06, 0.04]]), rare).tolist() == [[True, True, True]]


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, "0.9"])
def test_bad_coverage_is_named(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        fit_sets(np.full((10, 2), 0.5), np.zeros(10, int), bad)


def test_bad_labels_and_shapes_are_named():
    with pytest.raises(ValueError, match="0..2, got 0..3"):
        scores(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        mass_above(np.full(4, 0.25))
    with pytest.raises(ValueError, match="every class"):
        SetFit(0.9, (1.5,), (10,))
    with pytest.raises(ValueError, match="3 class quantiles for 2 classes"):
        SetFit(0.9, (0.5, 0.5, 0.5), (3, 3, 3), conditional=True).per_class(2)


def test_the_served_check_knows_where_two_computations_may_disagree():
    fit = SetFit(0.9, (0.7,), (50,))
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    assert near_quantile(p, fit, 1e-6).tolist() == [True, False]


def test_set_figures_by_hand():
    member = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]], bool)
    y = np.array([0, 2, 1, 2])
    out = set_figures(y, member, ["a", "b", "c"], prefix="h_")
    assert out["h_set_coverage"] == 0.75 and out["h_set_coverage_c"] == 0.5
    assert out["h_set_coverage_a"] == out["h_set_coverage_b"] == 1.0
    assert out["h_set_size_mean"] == 2.0
    assert [out[f"h_set_size_{s}_share"] for s in (1, 2, 3)] == [0.25, 0.5, 0.25]


# --- the guarantee, by simulation -----------------------------------------------------------------
DRAWS, N_HELD, N_TEST, C = 400, 300, 500, 4


def _simulated(coverage: float, conditional: bool, rule=None):
    """Per draw: fit on N_HELD held-out cases, measure on N_TEST new ones of the same model."""
    rng = np.random.default_rng(7)
    covered, per_class = [], []
    for _ in range(DRAWS):
        p, y = _calibrated(N_HELD, C, rng)
        pt, yt = _calibrated(N_TEST, C, rng)
        member = (rule(p, y, pt) if rule else
                  in_set(pt, fit_sets(p, y, coverage, conditional=conditional)))
        hit = member[np.arange(N_TEST), yt]
        covered.append(hit.mean())
        per_class.append([hit[yt == k].mean() for k in range(C)])
    return np.array(covered), np.array(per_class)


def test_marginal_coverage_over_draws_is_nominal_within_its_tolerance():
    covered, _ = _simulated(1 - ALPHA, conditional=False)
    # one draw's coverage: Beta(k, n + 1 - k) given the held-out cases, then N_TEST binomial
    # cases; its mean over DRAWS draws lies within 3 standard errors of the theory's mean
    k = math.ceil((N_HELD + 1) * (1 - ALPHA))
    mean = k / (N_HELD + 1)
    var = mean * (1 - mean) * (1 / (N_HELD + 2) + 1 / N_TEST)
    tolerance = 3 * math.sqrt(var / DRAWS)
    assert covered.mean() >= 1 - ALPHA - tolerance
    assert covered.mean() <= 1 - ALPHA + 1 / (N_HELD + 1) + tolerance
    assert abs(covered.mean() - mean) <= tolerance
    # and each draw's coverage falls in the 99% beta-binomial range nearly every time
    low, high = coverage_range(N_TEST, N_HELD, 1 - ALPHA, level=0.99)
    assert low < 1 - ALPHA < high
    inside = np.mean((covered >= low) & (covered <= high))
    assert inside >= 0.97, inside


def test_class_conditional_sets_cover_every_class():
    covered, per_class = _simulated(1 - ALPHA, conditional=True)
    tolerance = 3 * math.sqrt(ALPHA * (1 - ALPHA) * (4 / N_HELD + 4 / N_TEST) / DRAWS)
    assert (per_class.mean(axis=0) >= 1 - ALPHA - tolerance).all(), per_class.mean(axis=0)
    assert covered.mean() >= 1 - ALPHA - tolerance


def test_scoring_with_the_true_class_included_then_adding_the_crossing_class_overcovers():
    """Why the score is the mass *above* the true class: the mixed rule (score includes the
    true class, set includes the class that crosses q) is far above nominal."""
    def mixed(p, y, pt):
        inclusive = mass_above(p)[np.arange(len(y)), y] + p[np.arange(len(y)), y]
        q = conformal_quantile(inclusive, 1 - ALPHA)
        return mass_above(pt) < q  # the class that crosses q included

    covered, _ = _simulated(1 - ALPHA, conditional=False, rule=mixed)
    assert covered.mean() > 1 - ALPHA + 0.05
