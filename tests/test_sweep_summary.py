"""What the sweep says about itself in MLflow (orchestrator/sweep/records.py, summary.py): trial
run names, the leaderboard's statuses, the parent run's summary metrics and linked note."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from orchestrator.ensemble.report import EnsembleReport
from orchestrator.naming import (STOPPED_EARLY, cv_description, cv_trial_name,
                                 ensemble_description, short_trial_name, trial_description,
                                 trial_run_name)
from orchestrator.sweep.summary import summary_metrics, summary_note
from orchestrator.tracking.views import trials_view, trials_view_link


def test_trial_names_say_what_differs_between_trials():
    config = {"backbone": "resnet50", "resolution": 224, "schedule": "three_phase",
              "lr_multiplier": 4.04213, "label_smoothing": 0.1, "task": "brain", "epochs": 8}
    searched = ("backbone", "resolution", "schedule", "lr_multiplier", "label_smoothing",
                "unknown_key")
    assert trial_run_name("f35f0_00003", config, searched) == \
        "t03 resnet50 224px three_phase lr x4.042 ls 0.1"
    assert trial_run_name("f35f0_00012", {"mixup_alpha": 0.2, "batch_size": 16},
                          ("mixup_alpha", "batch_size")) == "t12 mixup 0.2 bs 16"
    assert trial_run_name("x_00001", {"new_knob": 1.23456}, ("new_knob",)) == \
        "t01 new_knob 1.235"
    assert short_trial_name("weird") == "weird"


def _board():
    return pd.DataFrame({"trial_id": ["a_00002", "a_00000", "a_00001", "a_00003"],
                         "best_val_accuracy": [0.9, 0.8, 0.7, float("nan")],
                         "status": ["completed", STOPPED_EARLY, STOPPED_EARLY, "errored"]})


def _report(note: str = ""):
    nan = float("nan")
    intervals = pd.DataFrame({"model": ["ensemble", "ensemble", "best_single"],
                              "metric": ["accuracy", "macro_f1", "accuracy"],
                              "point": [0.91, 0.9, 0.88],
                              "low": [nan if note else 0.85, 0.8, 0.8],
                              "high": [nan if note else 0.96, 0.95, 0.93],
                              "note": [note, "", ""]})
    return EnsembleReport(run_id="e" * 32, task="brain/3class", policy="none",
                          members=("a_00002",), weights=(1.0,), table=pd.DataFrame(),
                          model_uri="runs:/x/model", registered="medsweep-brain@candidate",
                          tracking_uri="sqlite://", intervals=intervals,
                          registered_name="medsweep-brain", registered_version="7")


def test_the_parent_run_summary_counts_trials_and_carries_the_ensemble_interval():
    metrics = summary_metrics(_board(), "val_accuracy", _report(), "accuracy")
    assert metrics == {"trials_run": 4.0, "trials_stopped_early": 2.0, "trials_failed": 1.0,
                       "best_val_accuracy": 0.9, "ensemble_test_accuracy": 0.91,
                       "ensemble_test_accuracy_ci_low": 0.85,
                       "ensemble_test_accuracy_ci_high": 0.96}
    assert "ensemble_test_accuracy" not in summary_metrics(_board(), "val_accuracy")
    assert summary_metrics(pd.DataFrame(), "val_accuracy") == {
        "trials_run": 0.0, "trials_stopped_early": 0.0, "trials_failed": 0.0}


def test_the_parent_run_note_links_the_best_trial_the_ensemble_and_the_model():
    metrics = summary_metrics(_board(), "val_accuracy", _report(), "accuracy")
    note = summary_note("3", ("a_00002", "r" * 32), _report(), metrics, "accuracy")
    assert "4 trial(s), 2 stopped early (ASHA), 1 failed" in note
    ml = "?workflowType=machine_learning"
    assert f"[t02](#/experiments/3/runs/{'r' * 32}{ml})" in note
    assert f"[ensemble run](#/experiments/3/runs/{'e' * 32}{ml}): test accuracy 0.910 " \
           "[0.850, 0.960]" in note
    assert "[medsweep-brain version 7](#/models/medsweep-brain/versions/7)" in note
    bare = summary_note("3", None, None, {"trials_run": 1.0})
    assert "1 trial(s)" in bare and "ensemble" not in bare


def test_the_parent_run_note_rounds_its_figures_and_links_the_ranked_trials():
    metrics = {**summary_metrics(_board(), "val_accuracy", _report(), "accuracy"),
               "best_val_accuracy": 0.8055555555555556}
    link = trials_view_link("3", "p" * 32)
    note = summary_note("3", ("t02", "r" * 32), _report(), metrics, "accuracy",
                        "val_accuracy", link)
    assert f"): best val_accuracy 0.806; [all trials by best_val_accuracy]({link})" in note
    assert "0.8055" not in note
    alone = summary_note("3", None, None, {"trials_run": 1.0}, metric="val_accuracy",
                         trials_link=link)
    assert f"- [All trials by best_val_accuracy]({link})" in alone


def test_the_trials_view_ranks_one_sweeps_trials_with_the_metric_as_a_column():
    """What MLflow 3.17's UI reads from a shared view: filter, order and columns (the URL
    alone cannot choose columns)."""
    state = trials_view("p" * 32, "val_accuracy", "max", ("schedule", "lr_multiplier"))
    assert state["searchFilter"] == (f"tags.`mlflow.parentRunId` = '{'p' * 32}' AND "
                                     "tags.`medsweep.kind` = 'trial'")
    assert state["orderByKey"] == "metrics.`best_val_accuracy`" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`best_val_accuracy`"
    assert state["selectedColumns"][-2:] == ["params.`schedule`", "params.`lr_multiplier`"]
    assert trials_view("p", "val_loss", "min", ())["orderByAsc"] is True
    assert trials_view_link("3", "p" * 32) == (
        f"#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey="
        f"medsweep-trials-{'p' * 32}")


def test_run_descriptions_are_one_rounded_line_in_the_short_names():
    assert trial_description("63832_00005", "val_accuracy", (0.8055555555555556, 5), 4, 8,
                             "stopped_early") == (
        "Search trial t05: best val_accuracy 0.806 at epoch 5; stopped early by ASHA after "
        "epoch 4 of 8.")
    assert trial_description("x_00001", "val_loss", None, 0, 8, "errored") == (
        "Search trial t01: no val_loss reported; failed after epoch 0 of 8.")
    assert cv_description("63832_00003", 1, 1, 3, "val_accuracy", (0.8625, 8), "completed") \
        .startswith("Cross-validation of finalist t03 (seed 2): trained with fold 2 of 3 held "
                    "out; best val_accuracy 0.863 at epoch 8 on that fold.")
    text = ensemble_description(["t03", "t01"], [0.625, 0.375], "light", "out-of-fold",
                                "accuracy 0.933 [0.867, 0.983]", ("medsweep-brain", "3"))
    assert text == ("Final ensemble: t03 x0.62 + t01 x0.38, TTA policy `light`, chosen on "
                    "out-of-fold predictions; test accuracy 0.933 [0.867, 0.983]; registered "
                    "as [medsweep-brain version 3](#/models/medsweep-brain/versions/3) (its "
                    "description is the model card).")
    assert "\n" not in text and not re.search(r"\d{5}_\d{5}", text)
    # a fold run's id is its model's name in the ensemble
    assert cv_trial_name("63832_00003", 0, 1) == "t03-f1"
    assert cv_trial_name("63832_00003", 2, 0) == "t03-r2-f0"


def test_a_summary_without_an_interval_shows_the_point_and_why():
    report = _report("test holds 9 groups (< 20): no interval")
    metrics = summary_metrics(_board(), "val_accuracy", report, "accuracy")
    assert metrics["ensemble_test_accuracy"] == 0.91
    assert "ensemble_test_accuracy_ci_low" not in metrics
    assert "ensemble_test_accuracy_ci_high" not in metrics
    note = summary_note("3", None, report, metrics, "accuracy")
    assert "test accuracy 0.910 [no interval] (test holds 9 groups (< 20): no interval)" in note


@pytest.mark.parametrize("trial_id, short", [("f35f0_00003", "t03"), ("ab_00123", "t123")])
def test_short_names_are_tunes_counter(trial_id, short):
    assert short_trial_name(trial_id) == short
