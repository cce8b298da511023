"""The words and tables of report.html: each section built from figures `evaluate` has already
computed (nothing here fits or measures anything)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from orchestrator.clinical.bootstrap import format_interval
from orchestrator.clinical.calibration import (apply_temperature, calibration_sentence,
                                               confidence_gap)
from orchestrator.clinical.html import Section
from orchestrator.clinical.referral import Referral
from orchestrator.clinical.resampled_metrics import fast_metrics
from tasks.base import Task

ENSEMBLE = "ensemble"
BEST_SINGLE = "best_single"


def _interval_table(intervals: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    shown = intervals[intervals.metric.isin(names)]
    table = shown.assign(value=[format_interval(r.point, r.low, r.high)
                                for r in shown.itertuples()])
    return table.pivot(index="metric", columns="model", values="value").reindex(
        [n for n in names if n in set(shown.metric)]).reset_index().rename_axis(columns=None)


def _rule_text(rule: str) -> str:
    if rule.startswith("sensitivity_lower95"):
        return (": the most specific threshold whose held-out sensitivity has a Wilson 95% "
                "lower bound at or above the target (where no threshold can show that on "
                "these cases, the one with the highest bound)")
    return ""


def _difference_text(task: Task, difference: dict | None) -> str:
    if difference is None:
        return ""
    low, high = difference["low"], difference["high"]
    verdict = ("better than" if low > 0 else "worse than" if high < 0 else
               "not distinguishable from")
    return (f" Ensemble minus best single configuration, {task.metric} on the same resampled "
            f"test cases (paired): {difference['point']:+.3f} [{low:+.3f}, {high:+.3f}]; "
            f"the ensemble is {verdict} the best single configuration on this test split.")


def _referral_text(referral: Referral, held: str, intervals: pd.DataFrame) -> str:
    if referral.refers_everything:
        return (f"No confidence cut reaches accuracy {referral.target_accuracy} on the {held} "
                "predictions, so the served model refers every case.")
    test = intervals[intervals.model == ENSEMBLE].set_index("metric")
    cov, acc = test.loc["coverage_at_refer_cut"], test.loc["accuracy_accepted_at_refer_cut"]
    return (f"The served model refers a case to a person when its calibrated confidence (the "
            f"probability of its decision) is below {referral.cut:.4f}: the lowest cut at "
            f"which the accepted {held} cases reach accuracy {referral.target_accuracy} "
            f"({referral.coverage:.1%} of {referral.cases} accepted, accuracy "
            f"{referral.accuracy:.3f}). On test: "
            f"{format_interval(cov.point, cov.low, cov.high)} accepted, accuracy of the "
            f"accepted {format_interval(acc.point, acc.low, acc.high)}.")


def sections(inputs, options, op, temperature, intervals, figures, review, groups_note,
              metric, referral: Referral, difference: dict | None) -> list[Section]:
    names = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc"]
    val_rows = pd.DataFrame([{"model": name, **fast_metrics(inputs.y_val, probs,
                                                            inputs.task.positive_index)}
                             for name, probs in inputs.val_probs.items()])
    composition = pd.DataFrame([{"member": m.name, "weight": m.weight,
                                 "resolution": m.resolution} for m in inputs.members])
    held = inputs.held_out
    source = ("the out-of-fold predictions of the cross-validated finalists (each member is "
              "its fold models averaged)" if held == "out-of-fold" else "the validation split")
    single = [m.name for m in inputs.members]
    same = (f" The ensemble is the best single configuration ({single[0]}): no addition "
            f"improved the {held} score.") if len(single) == 1 else ""
    sections = [
        Section("Ensemble", [f"Task {inputs.task.key}; TTA policy {inputs.policy}; TTA policy, "
                             f"members and weights chosen on {source} only (Caruana "
                             f"selection).{same}"],
                tables=[composition]),
        *([Section("Data", list(inputs.data_notes))] if inputs.data_notes else []),
        Section(f"{held.capitalize()} predictions (where every choice was made)",
                tables=[val_rows]),
        Section("Test, with 95% bootstrap intervals",
                [f"{options.resamples} resamples, stratified by class, {groups_note}. "
                 "The test split was predicted once, after every choice was fixed. Grad-CAM "
                 "maps and MC-dropout figures also read test images; they are drawn after "
                 "that and feed no choice." + _difference_text(inputs.task, difference)],
                tables=[_interval_table(intervals, names)]),
    ]
    if op is not None:
        figures_at = [f"{k}_at_threshold" for k in ("sensitivity", "specificity", "ppv", "npv",
                                                     "f1", "predicted_positive_rate")]
        sections.append(Section(
            "Operating point",
            [f"Threshold {op.threshold:.4f} on the calibrated positive-class probability (the "
             "one the served model returns), chosen on "
             f"{held} predictions by {op.rule}{_rule_text(op.rule)} ({held} sensitivity "
             f"{op.val_sensitivity:.3f}, "
             f"specificity {op.val_specificity:.3f}); threshold_table.csv lists the trade-off."],
            tables=[_interval_table(intervals[intervals.model == ENSEMBLE], figures_at)]))
    sections.append(Section(
        "Calibration",
        [calibration_sentence(temperature, held,
                              confidence_gap(inputs.y_test, inputs.test_probs[ENSEMBLE]),
                              confidence_gap(inputs.y_test, apply_temperature(
                                  inputs.test_probs[ENSEMBLE], temperature)))
         + " Test figures before and after:"],
        tables=[_interval_table(intervals[intervals.model == ENSEMBLE],
                                ["brier", "brier_calibrated", "ece", "ece_calibrated", "nll",
                                 "nll_calibrated"])]))
    sections.append(Section("Referral", [_referral_text(referral, held, intervals)]))
    sections.append(Section("Figures", figures=figures))
    board = inputs.leaderboard.drop(columns=["label"], errors="ignore")
    sections.append(Section(f"Trials (by {metric})", tables=[board]))
    sections.append(Section(
        "Cases to review",
        ["The test cases the ensemble is least sure about (calibrated probabilities), for a "
         "person to look at: review_low_confidence.csv."], tables=[review]))
    return sections
