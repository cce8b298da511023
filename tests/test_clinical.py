"""The clinical evaluation: metrics against scikit-learn, the threshold search, temperature
scaling, bootstrap intervals and group resampling, Grad-CAM on a planted feature, MC dropout and
report.html, on constructed arrays and a tiny CNN trained here."""
from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

import cv2

import keras
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from orchestrator.clinical.bootstrap import (MIN_GROUPS, bootstrap_intervals, count_units,
                                             figure_text, format_interval, interval_note,
                                             note_lines, paired_difference, resample_indices)
from orchestrator.clinical.calibration import (apply_temperature, binary_brier, brier_score,
                                               calibration_sentence, confidence_gap,
                                               expected_calibration_error, fit_temperature, nll,
                                               reliability_bins)
from orchestrator.clinical.evaluate import (ClinicalInputs, ClinicalOptions, Member, evaluate)
from orchestrator.clinical.gradcam import gradcam, overlay
from orchestrator.clinical.html import number_text
from orchestrator.clinical.operating_point import (binary_figures, choose_threshold,
                                                   threshold_table, wilson_lower_bound)
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.weighted_metrics import weighted_metrics
from orchestrator.clinical.evaluated import evaluated_heads
from orchestrator.clinical.ood import OodCut, OodEvaluated
from orchestrator.clinical.heads import review_table
from orchestrator.clinical.uncertainty import entropy, mc_dropout_probs, mc_summary
from orchestrator.errors import ConfigError
from orchestrator.metrics import classification_metrics
from orchestrator.models.classifier import build_model
from tasks import get_task

RNG = np.random.default_rng(7)


def _probs(n: int, c: int, rng=RNG) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(p, 2) / np.round(p, 2).sum(axis=1, keepdims=True)  # ties included


# --- metrics against scikit-learn ----------------------------------------------------------------
@pytest.mark.parametrize("c", [2, 3, 4])
def test_fast_metrics_agree_with_scikit_learn(c):
    y, p = _probs(500, c)
    got = fast_metrics(y, p)
    task = get_task("pneumonia" if c == 2 else "brain/3class" if c == 3 else "brain/4class")
    reference = classification_metrics(y, p, task)  # the trainer's own (scikit-learn) figures
    assert set(got) == set(reference)
    for key, value in reference.items():
        assert got[key] == pytest.approx(value), key
    pred = p.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    if c == 2:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
        assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    else:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
        assert got["pr_auc"] == pytest.approx(
            skm.average_precision_score(np.eye(c)[y], p, average="macro"))


def test_binary_figures_agree_with_scikit_learn():
    y, p = _probs(400, 2)
    f = binary_figures(y == 1, p[:, 1], 0.4)
    pred = p[:, 1] >= 0.4
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert f["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert f["specificity"] == pytest.approx(tn / (tn + fp))
    assert f["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert f["npv"] == pytest.approx(tn / (tn + fn))
    assert f["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert f["predicted_positive_rate"] == pytest.approx(pred.mean())


def test_calibration_figures_agree_with_scikit_learn_and_by_hand():
    y, p = _probs(300, 3)
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1, 2]))
    yb, pb = _probs(300, 2)
    assert brier_score(yb, pb) == pytest.approx(skm.brier_score_loss(yb, pb[:, 1]))
    assert binary_brier(yb, pb[:, 1]) == pytest.approx(np.mean((pb[:, 1] - yb) ** 2))
    assert nll(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]))
    # ECE by hand on a case small enough to do on paper: two bins used
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])  # bin (0.8, 0.867]: conf .8 acc 0; (0.867, 0.933]: .9 acc 1
    # (0.667, 0.733]: conf .7, acc 1; (0.533, 0.6]: .6, acc 1
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    bins = reliability_bins(labels, probs)
    assert bins["count"].sum() == 4


# --- the operating point -------------------------------------------------------------------------
def test_threshold_search_picks_the_most_specific_point_with_enough_sensitivity():
    # 10 positives, 10 negatives; scores constructed so that the answer is known:
    pos = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.2])
    neg = np.array([0.7, 0.5, 0.45, 0.4, 0.3, 0.25, 0.15, 0.1, 0.05, 0.01])
    y = np.r_[np.ones(10), np.zeros(10)].astype(bool)
    s = np.r_[pos, neg]
    op = choose_threshold(y, s, target_sensitivity=0.9)
    # sensitivity 0.9 needs threshold <= 0.55 (9 of 10 positives); at 0.55 one negative (0.7)
    # is above: specificity 0.9; any lower threshold only loses specificity.
    assert op.threshold == pytest.approx(0.55)
    assert (op.val_sensitivity, op.val_specificity) == (pytest.approx(0.9), pytest.approx(0.9))
    full = choose_threshold(y, s, target_sensitivity=1.0)
    assert full.threshold == pytest.approx(0.2) and full.val_sensitivity == 1.0
    assert full.val_specificity == pytest.approx(0.4)  # 0.7, 0.5, 0.45, 0.4, 0.3, 0.25 above
    youden = choose_threshold(y, s, rule="youden")
    f = binary_figures(y, s, youden.threshold)
    j = f["sensitivity"] + f["specificity"] - 1
    for t in np.unique(s):
        g = binary_figures(y, s, t)
        assert g["sensitivity"] + g["specificity"] - 1 <= j + 1e-12


def test_the_bound_rule_asks_held_out_data_to_show_the_target_with_confidence():
    # 100 positives: t=0.8 catches 90 (point 0.90, Wilson lower bound 0.826); t=0.4 catches 96
    # (lower bound 0.901 >= 0.90), at the cost of specificity.
    pos = np.r_[np.full(90, 0.8), np.full(6, 0.4), np.full(4, 0.1)]
    neg = np.r_[np.full(80, 0.05), np.full(10, 0.35), np.full(10, 0.6)]
    y = np.r_[np.ones(100), np.zeros(100)].astype(bool)
    s = np.r_[pos, neg]
    point = choose_threshold(y, s, rule="sensitivity", target_sensitivity=0.9)
    bound = choose_threshold(y, s, rule="sensitivity_bound", target_sensitivity=0.9)
    assert point.threshold == pytest.approx(0.8) and point.val_sensitivity == pytest.approx(0.9)
    assert bound.threshold == pytest.approx(0.4) and bound.val_sensitivity == pytest.approx(0.96)
    assert bound.rule == "sensitivity_lower95>=0.9"
    assert wilson_lower_bound(np.array([96]), 100)[0] >= 0.9 > wilson_lower_bound(
        np.array([90]), 100)[0]
    for k, n in ((96, 100), (90, 100), (10, 10), (0, 7)):  # scipy's Wilson interval, one by one
        expected = binomtest(k, n).proportion_ci(method="wilson").low
        assert wilson_lower_bound(np.array([k]), n)[0] == pytest.approx(expected, abs=1e-12)
    # 10 positives can never show 0.90 with confidence (10/10 has a lower bound of 0.72): the
    # most certain threshold, catching all of them, with the best specificity among those.
    few = choose_threshold(np.r_[np.ones(10), np.zeros(10)].astype(bool),
                           np.r_[np.linspace(0.5, 0.9, 10), np.linspace(0.0, 0.6, 10)],
                           rule="sensitivity_bound")
    assert few.val_sensitivity == 1.0 and few.threshold == pytest.approx(0.5)


def test_threshold_table_marks_the_chosen_point_and_bad_input_is_named():
    y, p = _probs(200, 2)
    op = choose_threshold(y == 1, p[:, 1])
    table = threshold_table(y == 1, p[:, 1], y == 1, p[:, 1], chosen=op.threshold)
    assert table["chosen"].sum() == 1
    assert table.loc[table.chosen, "val_sensitivity"].iloc[0] >= 0.9
    assert table["val_sensitivity"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="both positive and negative"):
        choose_threshold(np.ones(5, bool), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="unknown threshold rule 'best'"):
        choose_threshold(y == 1, p[:, 1], rule="best")
    with pytest.raises(ConfigError, match="target sensitivity"):
        ClinicalOptions(target_sensitivity=1.5)
    with pytest.raises(ConfigError, match=">= 1000"):
        ClinicalOptions(resamples=200)


# --- calibration ---------------------------------------------------------------------------------
def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    honest = np.exp(rng.normal(size=(2000, 3)) + 1.0 * np.eye(3)[y])
    honest /= honest.sum(axis=1, keepdims=True)
    over = apply_temperature(honest, 0.4)  # same ranking, far too sure
    t = fit_temperature(y[:1000], over[:1000])
    assert t == pytest.approx(2.5, rel=0.15)  # undoes the 0.4
    fixed = apply_temperature(over[1000:], t)
    assert nll(y[1000:], fixed) < nll(y[1000:], over[1000:]) - 0.1
    assert expected_calibration_error(y[1000:], fixed) < expected_calibration_error(
        y[1000:], over[1000:])
    assert (fixed.argmax(axis=1) == over[1000:].argmax(axis=1)).all()  # decisions unchanged
    np.testing.assert_allclose(apply_temperature(honest, 1.0), honest, atol=1e-9)


# --- bootstrap -----------------------------------------------------------------------------------
def _accuracy_interval(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8
    pred = np.where(correct, y, 1 - y)
    resamples = resample_indices(y, None, 1000, seed)
    frame = bootstrap_intervals(lambda idx: {"accuracy": float(np.mean(pred[idx] == y[idx]))},
                                n, resamples)
    return frame.set_index("metric").loc["accuracy"]


def test_interval_contains_the_point_and_narrows_as_n_grows():
    small, large = _accuracy_interval(100), _accuracy_interval(2000)
    for row in (small, large):
        assert row.low <= row.point <= row.high and row.resamples == 1000
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    assert format_interval(0.9123, 0.88, 0.94) == "0.912 [0.880, 0.940]"


def test_group_resampling_keeps_groups_whole_and_strata_sized():
    labels = np.repeat([0, 0, 1, 1, 1, 0, 1, 0], 3)  # 8 groups of 3 images
    groups = np.repeat(np.arange(8), 3)
    for idx in resample_indices(labels, groups, 200, seed=1):
        counts = np.bincount(groups[idx], minlength=8)
        assert (counts % 3 == 0).all()  # a group is drawn whole or not at all
        per_stratum = np.bincount(labels[idx], minlength=2)
        assert (per_stratum == [12, 12]).all()  # 4 groups of each class, every time
    plain = resample_indices(labels, None, 50, seed=1)
    assert any((np.bincount(groups[idx], minlength=8) % 3 != 0).any() for idx in plain)


def _resamples_drawn_plainly(labels, groups, n_resamples, seed):
    """The draw spelled out group by group (the stratum: the group's pandas mode)."""
    codes, group_of_case = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_of_case == g) for g in range(len(codes))]
    stratum = np.array([pd.Series(labels[m]).mode().iloc[0] for m in members])
    by_stratum = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in np.concatenate(
        [rng.choice(g, size=len(g), replace=True) for g in by_stratum])])
        for _ in range(n_resamples)]


@pytest.mark.parametrize("seed", range(6))
def test_the_resamples_are_the_plain_group_by_group_draw(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    labels = np.array(["b", "a", "c"])[rng.integers(0, 3, n)]
    groups = np.array([f"p{g}" for g in rng.integers(0, max(1, n // (1 + seed % 4)), n)])
    got = resample_indices(labels, groups, 20, seed)
    want = _resamples_drawn_plainly(labels, groups, 20, seed)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 20


def test_an_interval_means_nothing_below_20_groups_or_at_zero_width_inside_the_range():
    assert MIN_GROUPS == 20
    assert interval_note(1, 0.83, 0.83, 0.83) == "test holds 1 group: no interval"
    assert interval_note(12, 0.83, 0.70, 0.95) == "test holds 12 groups (< 20): no interval"
    assert interval_note(19, 0.83, 0.70, 0.95) != ""
    assert interval_note(25, 0.83, 0.70, 0.95) == ""  # enough groups, a real spread
    assert interval_note(25, 0.83, 0.83, 0.83) == "zero-width interval: no interval"
    assert interval_note(25, 1.0, 1.0, 1.0) == ""  # perfect on every resample: the truth
    assert interval_note(25, 0.0, 0.0, 0.0) == ""  # e.g. an error of 0
    assert interval_note(25, float("nan"), float("nan"), float("nan")) == ""


def test_units_are_the_distinct_groups_or_else_the_cases():
    labels = np.zeros(30, dtype=int)
    assert count_units(labels, None) == 30
    assert count_units(labels, np.repeat(["p1", "p2", "p3"], 10)) == 3
    assert count_units(labels, np.zeros(30)) == 1


def _one_group_frame(groups: np.ndarray) -> pd.DataFrame:
    y = np.arange(len(groups)) % 2
    pred = np.where(np.arange(len(groups)) % 6 == 0, 1 - y, y)  # 0.833 right
    resamples = resample_indices(y, groups, 1000, 0)
    return bootstrap_intervals(lambda idx: {"accuracy": float(np.mean(pred[idx] == y[idx])),
                                            "perfect": 1.0},
                               len(y), resamples, units=count_units(y, groups))


def test_one_group_gives_points_without_intervals_and_says_why_once():
    frame = _one_group_frame(np.zeros(60)).set_index("metric")
    row = frame.loc["accuracy"]
    assert row.point == pytest.approx(50 / 60) and row.groups == 1
    assert np.isnan(row.low) and np.isnan(row.high)  # no consumer can print [0.833, 0.833]
    assert row.note == "test holds 1 group: no interval"
    assert format_interval(row.point, row.low, row.high, note=row.note) == "0.833 [no interval]"
    assert note_lines(frame.reset_index()) == ["test holds 1 group: no interval for any "
                                               "test figure"]
    enough = _one_group_frame(np.arange(60) // 2).set_index("metric")  # 30 groups of 2
    assert enough.loc["accuracy", "note"] == "" and enough.loc["accuracy", "groups"] == 30
    assert enough.loc["accuracy", "low"] < enough.loc["accuracy", "point"] \
        < enough.loc["accuracy", "high"]
    assert enough.loc["perfect", "note"] == "" and enough.loc["perfect", "low"] == 1.0
    assert note_lines(enough.reset_index()) == []


def test_a_zero_width_interval_inside_the_range_is_named_for_its_figure_only():
    y = np.arange(40) % 2
    frame = bootstrap_intervals(lambda idx: {"accuracy": float(np.mean(y[idx] == y[idx])),
                                             "constant": 0.5}, 40, resample_indices(y, None, 50))
    assert list(frame.note) == ["", "zero-width interval: no interval"]
    assert note_lines(frame) == ["zero-width interval: no interval for constant"]


def test_the_paired_difference_of_too_few_groups_has_no_interval():
    y = np.arange(24) % 2
    a, b = np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.8 + 0.1
    groups = np.arange(24) // 3  # 8 patients

    def acc(labels, probs, counts):
        return weighted_metrics(labels, probs, counts)["accuracy"]

    draws = resample_indices(y, groups, 1000, 0)
    d = paired_difference(acc, y, a, b, draws, units=count_units(y, groups))
    assert d["point"] == 1.0 and d["groups"] == 8
    assert np.isnan(d["low"]) and d["note"] == "test holds 8 groups (< 20): no interval"
    same = paired_difference(acc, y, a, a, resample_indices(y, None, 1000, 0))
    assert same["note"] == "" and same["low"] == same["high"] == 0.0  # identical models


# --- prediction sets: the options and what a head fits -------------------------------------------
@pytest.mark.parametrize("bad", [0.0, 1.0, 1.2])
def test_a_bad_set_coverage_is_a_config_error_naming_it(bad):
    with pytest.raises(ConfigError, match=f"strictly between 0 and 1, got {bad}"):
        ClinicalOptions(set_coverage=bad)


def test_a_head_with_too_few_held_out_cases_says_its_sets_hold_every_class():
    from orchestrator.clinical.heads import Classification

    (eh,) = evaluated_heads(get_task("brain"))
    probs, y = np.tile([[0.6, 0.3, 0.1]], (8, 1)), np.arange(8) % 3
    lines = []
    sets = Classification().fit_sets(eh, y, probs, ClinicalOptions(), "validation", lines.append)
    assert sets.every_class == (0,)
    assert lines == ["warning: prediction sets: there are 8 validation case(s), fewer than the "
                     "9 a 90% quantile needs; it is infinite, so every set holds every class"]
    lines.clear()
    y = np.r_[np.zeros(20, int), np.ones(20, int), [2, 2]]
    sets = Classification().fit_sets(eh, y, np.tile([[0.6, 0.3, 0.1]], (42, 1)),
                                     ClinicalOptions(set_conditional=True), "out-of-fold",
                                     lines.append)
    assert sets.conditional and sets.every_class == (2,) and sets.cases == (20, 20, 2)
    assert lines == ["warning: prediction sets: class pituitary has 2 out-of-fold case(s), "
                     "fewer than the 9 a 90% quantile needs; it is infinite, so pituitary is in "
                     "every set"]


# --- a tiny CNN with a planted feature -----------------------------------------------------------
SIZE, SQUARE = 64, 10


def _planted(n: int, seed: int):
    """Class 1: a bright square at a random place on noise; class 0: noise only."""
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.arange(n) % 2
    boxes = np.zeros((n, 2), int)
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(0, SIZE - SQUARE, 2)
        x[i, r:r + SQUARE, c:c + SQUARE] = 235
        boxes[i] = r, c
    return x, y, boxes


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x, y, _ = _planted(320, 0)
    model = build_model("baseline_cnn", 2, SIZE, weights="none", head_units=32, dropout=0.3)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x.astype(np.float32), y, epochs=8, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("model") / "planted.keras"
    model.save(path)
    return model, str(path)


@pytest.mark.slow
def test_gradcam_peaks_on_the_planted_feature(planted_model):
    model, _ = planted_model
    x, y, boxes = _planted(60, 1)
    positive = np.flatnonzero(y == 1)
    assert model.predict(x[positive].astype(np.float32), verbose=0).argmax(1).mean() > 0.9
    maps = gradcam(model, x[positive], 1)
    assert maps.shape == (len(positive), SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    hits, contrast = 0, []
    margin = SIZE // 8  # the map comes from a 4x4 feature grid: half a cell of slack
    for m, (r, c) in zip(maps, boxes[positive]):
        pr, pc = np.unravel_index(m.argmax(), m.shape)
        hits += (r - margin <= pr < r + SQUARE + margin) and (c - margin <= pc < c + SQUARE + margin)
        inside = np.zeros_like(m, bool)
        inside[r:r + SQUARE, c:c + SQUARE] = True
        contrast.append(m[inside].mean() / max(m[~inside].mean(), 1e-9))
    assert hits >= 0.8 * len(positive), f"{hits} of {len(positive)} maps peak on the square"
    assert np.mean(np.array(contrast) > 2) >= 0.9, contrast  # the square, not the background
    assert overlay(x[positive[0]], maps[0]).shape == (SIZE, SIZE, 3)


@pytest.mark.slow
def test_mc_dropout_samples_vary_and_entropy_is_a_real_entropy(planted_model):
    model, _ = planted_model
    x, _, _ = _planted(20, 2)
    samples = mc_dropout_probs(model, x, passes=8, seed=0)
    assert samples.shape == (8, 20, 2)
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, atol=1e-5)
    assert samples.std(axis=0).max() > 1e-4  # dropout is on
    again = mc_dropout_probs(model, x, passes=8, seed=0)
    np.testing.assert_allclose(samples, again, atol=1e-6)  # seeded
    summary = mc_summary(samples)
    assert (summary["predictive_entropy"] <= np.log(2) + 1e-9).all()
    assert (summary["mutual_information"] >= 0).all()
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))


def test_gradcam_and_mc_dropout_run_the_head_of_a_model_with_the_frequency_stream():
    """A model with the FFT stream: the head reads fused features, and running it by hand must
    give the model's own answer (dropout off: every MC sample at rate 0 is the prediction)."""
    keras.utils.set_random_seed(1)
    model = build_model("baseline_cnn", 2, SIZE, weights="none", head_units=16, dropout=0.0,
                        frequency_stream=True)
    x, _, _ = _planted(6, 3)
    expected = model.predict(x.astype(np.float32), verbose=0)
    samples = mc_dropout_probs(model, x, passes=2, seed=0)
    np.testing.assert_allclose(samples[0], expected, atol=1e-5)
    maps = gradcam(model, x, 1)
    assert maps.shape == (6, SIZE, SIZE) and np.isfinite(maps).all()


def test_review_table_lists_the_least_confident_cases_first():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.51, 0.49]])
    (head,) = evaluated_heads(get_task("pneumonia").with_classes(("neg", "pos")))
    table = review_table(["a", "b", "c", "d"], [head], np.array([0, 1, 1, 0]), probs, 3)
    assert table["path"].tolist() == ["d", "b", "c"]
    assert table.loc[1, "correct"] == False  # noqa: E712  (b: true pos, predicted neg)


# --- the whole report ----------------------------------------------------------------------------
# 40 test patients of two views each (image i and i + 40: one label), but the last image's
# patient is p0, whose other view has the other label: a mixed group
TEST_GROUPS = np.array([f"p{i % 40}" for i in range(79)] + ["p0"])


def _assert_the_per_patient_section(result, html: str, y_test, names) -> None:
    """The rule chosen on the held-out pairs, the figures per patient with intervals, the
    confusion matrix and the review per patient, the mixed patient named."""
    fit = result.answer
    assert fit.group_rule in ("mean", "max") and fit.grouping.groups == 30
    assert set(fit.grouping.scores) == {"mean", "max"}
    assert fit.group_rule == min(fit.grouping.scores, key=fit.grouping.scores.get)
    assert {"test_metrics_per_patient.csv", "review_per_patient.csv",
            "confusion_matrix_per_patient.png"} <= names
    per = pd.read_csv([p for p in result.files if p.name == "test_metrics_per_patient.csv"][0])
    assert set(per.groups) == {40} and (per.note.isna()).all()
    row = per.set_index("metric").loc["patient_balanced_accuracy"]
    assert row.low <= row.point <= row.high
    assert result.metrics["test_patient_balanced_accuracy"] == row.point
    assert "test_patient_sensitivity_at_threshold_ci_low" in result.metrics
    review = pd.read_csv([p for p in result.files if p.name == "review_per_patient.csv"][0])
    assert len(review) == 20 and review.confidence.is_monotonic_increasing
    assert set(review.n_images) <= {1, 2, 3}
    page = unescape(html)
    section = page[page.index("<h2>Per patient</h2>"):page.index("<h2>Figures</h2>")]
    assert "80 images form 40 groups" in section and "1 test group(s) have images with " \
        "different labels: p0." in section
    assert f"combined per group by their {fit.group_rule}, chosen on 30 validation " \
        "groups of 60 images" in section
    assert result.patient_line.startswith("per patient: 40 test groups of 80 images, combined "
                                          f"by {fit.group_rule} (chosen on validation groups)")
    assert result.patient_line.endswith("; 1 group(s) with mixed labels")
    # p0 holds a negative and a positive view: positive, as the binary group label
    p0 = review[review.group == "p0"]
    assert p0.empty or (p0.true == "PNEUMONIA").all()


@pytest.mark.slow
def test_evaluate_writes_report_html_referencing_every_plot(planted_model, tmp_path):
    _, model_path = planted_model
    task = get_task("pneumonia")
    x_val, y_val, _ = _planted(60, 3)
    x_test, y_test, _ = _planted(80, 4)
    model = keras.models.load_model(model_path)
    val = model.predict(x_val.astype(np.float32), verbose=0)
    test = model.predict(x_test.astype(np.float32), verbose=0)
    board = pd.DataFrame({"trial": ["t1", "t2"], "best_val_roc_auc": [0.9, 0.8],
                          "status": ["completed", "stopped_early"], "label": ["t1", "t2"]})
    inputs = ClinicalInputs(
        task=task, y_val=y_val, y_test=y_test, val_probs={"ensemble": val, "best_single": val},
        test_probs={"ensemble": test, "best_single": test},
        test_groups=TEST_GROUPS, test_paths=[f"img{i}.png" for i in range(80)],
        test_images={SIZE: x_test}, members=[Member("t1", 1.0, model_path, SIZE)],
        policy="none", leaderboard=board, synthetic=True, title="test report",
        ood=OodEvaluated(OodCut(7.25, 0.05, 60, 0.033), "pool", np.arange(80) % 10 == 0),
        val_groups=np.arange(60) % 30)  # two views per patient, of one label
    result = evaluate(inputs, ClinicalOptions(mc_dropout_passes=4, gradcam_per_group=2), tmp_path,
                      log=lambda _: None)
    names = {p.name for p in result.files}
    assert {"report.html", "threshold_table.csv", "test_metrics_with_ci.csv",
            "review_low_confidence.csv", "confusion_matrix.png", "roc_pr_curves.png",
            "reliability_diagram.png", "trial_comparison.png"} <= names
    assert any(n.startswith("gradcam_") for n in names)
    html = (tmp_path / "report.html").read_text()
    for png in [n for n in names if n.endswith(".png")]:
        assert f'data-file="{png}"' in html, png
    assert "SYNTHETIC" in html and html.count("data:image/png;base64,") == sum(
        n.endswith(".png") for n in names)
    assert result.operating_point is not None and "threshold" in result.metrics
    assert "test_mc_dropout_mean_entropy" in result.metrics
    ci = result.intervals.set_index(["model", "metric"])
    row = ci.loc[("ensemble", "sensitivity_at_threshold")]
    assert row.low <= row.point <= row.high
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", html)
    # every table's header names every column (no unnamed first column)
    headers = _table_headers(html)
    assert len(headers) >= 5
    for header in headers:
        assert header and all(cell.strip() for cell in header), header
    # figures wide enough to read (>= 1000 px)
    for png in [p for p in result.files if p.suffix == ".png"]:
        assert cv2.imread(str(png)).shape[1] >= 1000, png.name
    # the referral and the paired ensemble-vs-best-single comparison are reported
    assert "refer_cut" in result.metrics
    assert f"test_{task.metric}_minus_best_single_ci_low" in result.metrics
    assert result.metrics[f"test_{task.metric}_minus_best_single"] == 0.0  # same model twice
    assert "not distinguishable from the best single configuration" in html
    # the served OOD flag: its cut, and the share of test images it raises, with an interval
    assert result.metrics["ood_cut"] == 7.25 and result.metrics["val_ood_flagged"] == 0.033
    assert result.metrics["test_ood_flagged"] == pytest.approx(0.1)
    assert result.metrics["test_ood_flagged_ci_low"] < 0.1 < result.metrics[
        "test_ood_flagged_ci_high"]
    section = unescape(html)[unescape(html).index("<h2>Out-of-distribution flag</h2>"):]
    assert "features to the nearest training class mean" in section and "above 7.250" in section
    assert "the 95% quantile of the scores of 60 validation images" in section
    assert re.search(r"On test: 0\.100 \[0\.\d{3}, 0\.\d{3}\] of the images flagged", section)
    # 60 held-out cases cannot back any cut at accuracy 0.95 (a perfect record needs 120)
    assert result.referral.refers_everything and result.referral.cases == 60
    assert "Referral" in html and "refers every case to a person: no confidence level " \
        "supports accuracy 0.95 on these 60 validation cases" in unescape(html)
    # prediction sets: fitted on validation, measured on test with intervals, reported
    sets = result.answer.sets
    assert sets.coverage == 0.90 and sets.cases == (60,) and not sets.conditional
    assert result.metrics["set_quantile"] == sets.quantiles[0]
    for key in ("test_set_coverage", "test_set_coverage_NORMAL", "test_set_coverage_PNEUMONIA",
                "test_set_size_mean", "test_set_size_1_share", "test_set_size_2_share"):
        assert key in result.metrics, key
    shares = result.metrics["test_set_size_1_share"] + result.metrics["test_set_size_2_share"]
    assert shares == pytest.approx(1.0)
    assert result.metrics["test_set_size_mean"] == pytest.approx(
        1 + result.metrics["test_set_size_2_share"])
    page = unescape(html)
    assert "<h2>Prediction sets</h2>" in page and "What the coverage guarantee assumes" in page
    assert page.index("<h2>Prediction sets</h2>") < page.index("<h2>Figures</h2>")
    assert f"q = {sets.quantiles[0]:.4f}" in page and "set size" in page
    # the calibration sentence follows the fitted T and the test bins
    gap, text = confidence_gap(y_test, test), unescape(html)
    assert ("over-confident: the curve runs below" if gap > 0.02 else
            "under-confident: the curve runs above" if gap < -0.02 else
            "close to calibrated: the curve follows the diagonal") in text
    assert ("> 1: on the validation predictions the ensemble was over-confident"
            if result.temperature > 1 else "< 1: on the validation predictions the ensemble "
            "was under-confident") in text
    _assert_the_per_patient_section(result, html, y_test, names)
    _assert_a_reader_sees_figures_not_nan(result, html)


def _assert_a_reader_sees_figures_not_nan(result, html: str) -> None:
    """Every case is referred here, so none is accepted: said in words, never `nan` or an
    interval of zeros; figures drawn at the size they were made for; wide tables scroll in
    their own box."""
    ens = result.intervals[result.intervals.model == "ensemble"].set_index("metric")
    assert ens.loc["coverage_at_refer_cut"].point == 0.0
    assert np.isnan(ens.loc["accuracy_accepted_at_refer_cut"].point)
    text = re.sub(r"data:image/png;base64,[^\"]*", "", unescape(html))
    assert not re.search(r"\bnan\b", text)
    shown = re.findall(r"coverage_at_refer_cut</td>\s*<td>([^<]*)<", text)
    assert shown and set(shown) == {"0.000 (every case referred: no test case accepted)"}
    assert set(re.findall(r"accuracy_accepted_at_refer_cut</td>\s*<td>([^<]*)<", text)) == {
        "none (no test case accepted)"}
    assert figure_text("coverage_at_refer_cut", 0.0, 0.0, 0.0) == \
        "0.000 (every case referred: no test case accepted)"
    assert figure_text("accuracy_accepted_at_refer_cut", np.nan, np.nan, np.nan) == \
        "none (no test case accepted)"
    # a 5-inch square reliability diagram shows at 480 px, not stretched to the page
    width = re.search(r'data-file="reliability_diagram.png" width="(\d+)"', html)
    assert width and int(width.group(1)) == 480
    assert "figure img { max-width: 100%; height: auto;" in html
    assert html.count("<table") == html.count("<div class='table-wrap'><table") > 0
    assert ".table-wrap { max-width: 100%; overflow-x: auto; }" in html
    # figures in tables to 3 decimals, as the console and the card give them
    assert not re.search(r"<td>(?!0\.000)\d+\.\d{4,}</td>", html)  # 0.00088 keeps 2 digits
    assert number_text(0.8055555555555556) == "0.806" and number_text(2.763e-11) == "2.8e-11"


@pytest.mark.slow
def test_a_test_split_of_one_group_is_reported_without_any_interval(planted_model, tmp_path):
    """A real run had one patient group in test: every resample is that group, so every
    interval came out as [point, point]. Points only now, with the reason, everywhere."""
    _, model_path = planted_model
    model = keras.models.load_model(model_path)
    x_val, y_val, _ = _planted(60, 3)
    x_test, y_test, _ = _planted(40, 4)
    val = model.predict(x_val.astype(np.float32), verbose=0)
    test = model.predict(x_test.astype(np.float32), verbose=0)
    test[:5] = test[:5, ::-1]  # five wrong answers: figures inside (0, 1), as in that run
    worse = test.copy()
    worse[5:10] = worse[5:10, ::-1]
    board = pd.DataFrame({"trial": ["t1"], "best_val_roc_auc": [0.9], "status": ["completed"],
                          "label": ["t1"]})
    inputs = ClinicalInputs(
        task=get_task("pneumonia"), y_val=y_val, y_test=y_test,
        val_probs={"ensemble": val, "best_single": val},
        test_probs={"ensemble": test, "best_single": worse},
        test_groups=np.full(len(y_test), "patient-1"),
        test_paths=[f"img{i}.png" for i in range(40)], test_images={SIZE: x_test},
        members=[Member("t1", 1.0, model_path, SIZE)], policy="none", leaderboard=board,
        synthetic=True, title="one group")
    lines = []
    result = evaluate(inputs, ClinicalOptions(gradcam_per_group=1), tmp_path, log=lines.append)
    assert not [k for k in result.metrics if k.endswith(("_ci_low", "_ci_high"))]
    assert 0 < result.metrics["test_balanced_accuracy"] < 1  # the points stay
    assert "test_roc_auc_minus_best_single" in result.metrics
    assert result.interval_notes == ["test holds 1 group: no interval for any test figure"]
    assert result.interval_notes[0] in lines
    assert (result.intervals.groups == 1).all() and result.intervals.low.isna().all()
    saved = pd.read_csv(tmp_path / "test_metrics_with_ci.csv")
    assert set(saved.note) == {"test holds 1 group: no interval"}
    html = unescape((tmp_path / "report.html").read_text())
    assert "no interval" in html and "Test holds 1 group: no interval for any test figure" in html
    assert f"{result.metrics['test_balanced_accuracy']:.3f} [no interval]" in html
    assert not re.search(r"\[[+-]?\d\.\d{3}, [+-]?\d\.\d{3}\]", html)  # no [x, y] at all
    for verdict in ("is better than", "is worse than", "is not distinguishable from"):
        assert f"{verdict} the best single" not in html  # no verdict from no interval
    assert "this test split cannot tell whether the ensemble beats" in html


def _table_headers(page: str) -> list[list[str]]:
    """The <th> texts of each table's header row(s)."""
    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.in_th = [], False

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "th":
                self.in_th = True
                self.tables[-1].append("")

        def handle_endtag(self, tag):
            if tag == "th":
                self.in_th = False

        def handle_data(self, data):
            if self.in_th:
                self.tables[-1][-1] += data

    parser = Parser()
    parser.feed(page)
    return parser.tables


def test_the_calibration_sentence_follows_the_numbers():
    over = calibration_sentence(1.8, "out-of-fold", 0.12, 0.01)
    assert "T = 1.800 > 1" in over and "over-confident, so scaling softens" in over
    assert "+0.120 before scaling (over-confident: the curve runs below the diagonal)" in over
    assert "+0.010 after (close to calibrated)" in over
    under = calibration_sentence(0.6, "validation", -0.09, -0.03)
    assert "T = 0.600 < 1" in under and "under-confident, so scaling sharpens" in under
    assert "(under-confident: the curve runs above the diagonal)" in under
    assert "-0.030 after (under-confident)" in under
    # a gap measured on the reliability bins: all-correct cases at 0.6 confidence are under-
    y = np.zeros(50, dtype=int)
    probs = np.tile([0.6, 0.4], (50, 1))
    assert confidence_gap(y, probs) == pytest.approx(-0.4)
    assert confidence_gap(1 - y, probs) == pytest.approx(0.6)


def test_the_trial_axis_names_the_metric_once():
    from orchestrator.clinical.plots import _metric_name

    assert _metric_name("best_val_accuracy") == "accuracy"
    assert _metric_name("best_val_balanced_accuracy") == "balanced accuracy"


@pytest.mark.slow
def test_threshold_and_temperature_ignore_the_test_labels(planted_model, tmp_path):
    _, model_path = planted_model
    model = keras.models.load_model(model_path)
    x_val, y_val, _ = _planted(40, 5)
    x_test, y_test, _ = _planted(40, 6)
    val = model.predict(x_val.astype(np.float32), verbose=0)
    val[:, 1] = np.clip(val[:, 1] + RNG.normal(0, 0.2, len(val)), 0, 1)  # an imperfect model
    val[:, 0] = 1 - val[:, 1]
    test = model.predict(x_test.astype(np.float32), verbose=0)
    board = pd.DataFrame({"trial": ["t1"], "best_val_roc_auc": [0.9], "label": ["t1"]})
    results = []
    shuffle = np.random.default_rng(0)
    for labels, groups in ((y_test, np.arange(40) // 2),
                           (shuffle.permutation(y_test), shuffle.permutation(40) // 4)):
        inputs = ClinicalInputs(
            task=get_task("pneumonia"), y_val=y_val, y_test=labels,
            val_probs={"ensemble": val}, test_probs={"ensemble": test},
            test_groups=groups, test_paths=[str(i) for i in range(len(labels))],
            test_images={SIZE: x_test}, members=[Member("t1", 1.0, model_path, SIZE)],
            policy="none", leaderboard=board, synthetic=True, title="permuted",
            val_groups=np.arange(40) % 13)
        results.append(evaluate(inputs, ClinicalOptions(gradcam_per_group=1),
                                tmp_path / str(len(results)), log=lambda _: None))
    first, permuted = results
    assert first.operating_point == permuted.operating_point
    assert first.temperature == permuted.temperature
    assert first.answer.sets == permuted.answer.sets  # the set quantile too
    assert first.answer.grouping == permuted.answer.grouping  # the per-patient rule too
    assert first.answer.group_rule is not None
    assert first.metrics["test_accuracy"] != permuted.metrics["test_accuracy"]
