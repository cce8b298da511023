"""Every resample scored at once from its counts gives each resample's own figures: the
trainer's (scikit-learn) on the resampled cases, and the bootstrap's rows are those of the
per-resample path."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.clinical import bootstrap
from orchestrator.clinical.bootstrap import bootstrap_intervals, count_units, resample_indices
from orchestrator.clinical.resampled_metrics import fast_metrics, fast_multihead_metrics
from orchestrator.clinical.weighted_metrics import (resample_counts, weighted_metrics,
                                                    weighted_multihead_metrics)
from orchestrator.metrics import classification_metrics, multihead_metrics
from tasks import get_task
from tasks.multihead import MULTIHEAD

TASKS = {2: "pneumonia", 3: "brain/3class", 4: "brain/4class"}


def _close(got: float, want: float, key: str) -> None:
    if np.isnan(want):
        assert np.isnan(got), key
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), key


def _cases(seed: int, n: int, c: int, absent: bool, ties: bool, group_size: int):
    """Labels (class c-1 left out when `absent`), probabilities (rounded to 0.1 when `ties`:
    many ties) and groups of up to `group_size` cases: resamples of varying length."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c - 1 if absent else c, n)
    p = rng.dirichlet(np.ones(c), n)
    if ties:
        p = np.round(p, 1) + 1e-3
    groups = rng.integers(0, max(1, n // group_size), n)
    return y, p / p.sum(axis=1, keepdims=True), groups


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(2, 40), c=st.sampled_from([2, 3, 4]),
       absent=st.booleans(), ties=st.booleans(), group_size=st.integers(1, 4))
def test_each_resample_gets_the_trainers_figures_of_its_cases(seed, n, c, absent, ties,
                                                              group_size):
    y, p, groups = _cases(seed, n, c, absent, ties, group_size)
    task = get_task(TASKS[c])
    draws = resample_indices(y, groups, 4, seed)
    got = weighted_metrics(y, p, resample_counts(draws, n), task.positive_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, idx in enumerate(draws):
            reference = classification_metrics(y[idx], p[idx], task)
            assert list(got) == list(reference)
            one = fast_metrics(y[idx], p[idx], task.positive_index)  # the cases, not counts
            for key, want in reference.items():
                _close(float(got[key][b]), want, key)
                _close(one[key], want, key)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(8, 40), group_size=st.integers(1, 3))
def test_each_resample_gets_the_trainers_multihead_figures(seed, n, group_size):
    rng = np.random.default_rng(seed)
    y = np.c_[rng.integers(0, 3, n), rng.integers(0, 3, n), rng.normal(40, 8, n)]
    matrix = np.c_[rng.dirichlet(np.ones(4), n), rng.dirichlet(np.ones(3), n),
                   y[:, 2] + rng.normal(0, 5, n)]
    groups = rng.integers(0, max(1, n // group_size), n)
    draws = resample_indices(y[:, 0].astype(int), groups, 4, seed)
    got = weighted_multihead_metrics(y, matrix, resample_counts(draws, n), MULTIHEAD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, idx in enumerate(draws):
            reference = multihead_metrics(y[idx], matrix[idx], MULTIHEAD)
            assert list(got) == list(reference)
            one = fast_multihead_metrics(y[idx], matrix[idx], MULTIHEAD)
            for key, want in reference.items():
                _close(float(got[key][b]), want, key)
                _close(one[key], want, key)


def test_counts_are_how_often_each_case_is_drawn():
    draws = [np.array([0, 0, 3]), np.array([2]), np.array([], dtype=int), np.array([1, 2, 1, 1])]
    counts = resample_counts(draws, 4)
    assert counts.tolist() == [[2, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 3, 1, 0]]


@pytest.mark.parametrize("c", [2, 4])
def test_the_bootstrap_rows_are_those_of_scoring_each_resample(c, monkeypatch):
    """600 cases in patients of 1 to 4 images, a rare class that some resamples lack
    (its one-vs-rest NaN there): the same rows, point, low, high, resamples and note, whether
    each resample is scored alone or all are at once (in chunks, the last one short)."""
    rng = np.random.default_rng(c)
    groups = np.repeat(np.arange(250), rng.integers(1, 5, 250))[:600]
    y = rng.integers(0, min(c, 3), 600)
    if c == 4:  # the last class: one image in each of 3 patients of 3 or more, never a stratum
        big = np.flatnonzero(np.bincount(groups) >= 3)[:3]
        y[np.isin(groups, big)] = 0
        y[[np.flatnonzero(groups == g)[0] for g in big]] = 3
    logits = rng.normal(size=(600, c)) + 1.5 * np.eye(c)[y]
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2) + 1e-4
    p /= p.sum(axis=1, keepdims=True)
    draws = resample_indices(y, groups, 300, 0)
    units = count_units(y, groups)
    one_by_one = bootstrap_intervals(lambda idx: fast_metrics(y[idx], p[idx]), 600, draws,
                                     units=units)
    monkeypatch.setattr(bootstrap, "CHUNK_ENTRIES", 600 * 64)
    at_once = bootstrap_intervals(None, 600, draws, units=units,
                                  weighted=lambda counts: weighted_metrics(y, p, counts))
    pd.testing.assert_frame_equal(at_once[["metric", "resamples", "groups", "note"]],
                                  one_by_one[["metric", "resamples", "groups", "note"]])
    np.testing.assert_allclose(at_once[["point", "low", "high"]].to_numpy(),
                               one_by_one[["point", "low", "high"]].to_numpy(), rtol=1e-12,
                               atol=1e-12)
    if c == 4:
        rows = at_once.set_index("metric")
        assert 0 < rows.loc["roc_auc", "resamples"] < 300  # the NaN resamples left out
        assert rows.loc["accuracy", "resamples"] == 300
