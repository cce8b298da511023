"""What a reviewer reads of the final ensemble's choice: the files (comparison table, per-class
report, the selection trajectory, the policy scores) and the console summary. (The clinical
figures, confusion matrix included, are `orchestrator.clinical`'s.)"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from orchestrator.clinical.artifacts import REPORT
from orchestrator.clinical.referral import Referral
from orchestrator.ensemble import artifacts
from tasks.base import Task


@dataclass
class EnsembleReport:
    run_id: str
    task: str
    policy: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    table: pd.DataFrame  # rows: ensemble / best single / top-2; columns: val_* and test_*
    model_uri: str
    registered: str  # "name@alias (version N)"
    tracking_uri: str
    intervals: pd.DataFrame | None = None  # test metrics with 95% bootstrap intervals
    temperature: float | None = None
    threshold: float | None = None  # binary tasks: the operating point chosen on validation
    chosen_on: str = "validation"  # or "out-of-fold": what every choice above was made on
    held_out_images: int = 0  # how many held-out predictions per candidate the choice saw
    # The single-label answer's refer rule (None for a multi-head ensemble: see head_fits)
    referral: Referral | None = None
    registered_name: str = ""  # medsweep-<task>
    registered_version: str = ""
    # A multi-head ensemble: each classification head's temperature and refer cut (HeadFit)
    head_fits: tuple = ()
    ood: object = None  # the OOD flag's cut (`serving.contract.OodSpec`), None before it existed
    ood_test_flagged: float | None = None  # share of test images above the OOD cut

    # (head name, "" for a single-label task's answer; its conformal.SetFit) per head with sets
    sets: tuple = ()
    patient_line: str = ""  # the test figures per group (patient, lesion); "": one image each
    subgroup_line: str = ""  # the test figures per --subgroup value; "": none asked

    @property
    def refer_cut(self) -> float | None:
        """The served model refers cases below this confidence."""
        return self.referral.cut if self.referral is not None else None


def write_reports(table: pd.DataFrame, y_test: np.ndarray, probs: np.ndarray, task: Task,
                  choice, out: Path) -> list[Path]:
    """The comparison, selection and policy files, and a classification report per
    classification head (`classification_report.csv` of a single-label task's one head,
    `classification_report_<head>.csv` of a multi-head task's); a regression head's figures
    are in the comparison."""
    from orchestrator.clinical.evaluated import evaluated_heads

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / artifacts.COMPARISON, out / artifacts.SELECTION_TRAJECTORY,
             out / artifacts.TTA_POLICY_SCORES]
    table.to_csv(paths[0], index=False)
    pd.DataFrame(choice.ensemble.trajectory, columns=["added", "val_score"]).to_csv(
        paths[1], index_label="step")
    pd.Series(choice.scores_by_policy, name="val_score").to_csv(paths[2], index_label="policy")
    for eh in evaluated_heads(task):
        if not eh.head.is_classification:
            continue
        classes = list(eh.head.classes)
        report = classification_report(eh.targets(y_test),
                                       np.asarray(probs)[:, eh.columns].argmax(axis=1),
                                       labels=list(range(len(classes))), target_names=classes,
                                       output_dict=True, zero_division=0)
        paths.append(out / eh.file(artifacts.CLASSIFICATION_REPORT))
        pd.DataFrame(report).T.to_csv(paths[-1])
    return paths


METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc")
# A multi-head table: the sweep metric, then per head (in the table's order) these
SHOWN_HEAD_SUFFIXES = ("_balanced_accuracy", "_macro_f1", "_mae", "_r2")


def shown_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics the console shows of a comparison table: a multi-head one's mean_skill and
    each head's balanced accuracy and macro F1, or MAE and R²."""
    if "val_mean_skill" not in table.columns:
        return list(METRICS)
    return ["mean_skill"] + [c[4:] for c in table.columns if c.startswith("val_")
                             and c.endswith(SHOWN_HEAD_SUFFIXES)
                             and not c.startswith("val_mean_skill")]
# The ensemble's other test figures, a line per group
EXTRA_GROUPS = (("sensitivity_at_threshold", "specificity_at_threshold", "ppv_at_threshold",
                 "npv_at_threshold"),
                ("brier", "brier_calibrated", "ece", "ece_calibrated"),
                ("coverage_at_refer_cut", "accuracy_accepted_at_refer_cut"))


def print_report(report: EnsembleReport) -> None:
    """Held-out and test figures side by side: the choice was made on the first, judged on the
    second (test figures with their 95% bootstrap intervals, or `[no interval]` and one line
    saying why). Members by their trials' short names (`t03`), as the sweep's epoch lines and
    leaderboard show them."""
    from orchestrator.clinical.bootstrap import (figure_text, format_interval, note_lines,
                                                 row_note)
    from orchestrator.console import rule
    from orchestrator.naming import short_trial_name

    def test_value(model: str, metric: str, point: float) -> str:
        if report.intervals is None:
            return f"{point:.3f}"
        found = report.intervals[(report.intervals.model == model)
                                 & (report.intervals.metric == metric)]
        if found.empty:
            return f"{point:.3f}"
        return format_interval(point, found.low.iloc[0], found.high.iloc[0],
                               note=row_note(found.iloc[0]))

    print(rule(f"final ensemble for {report.task}: TTA {report.policy}; members " + ", ".join(
        f"{short_trial_name(m)} ({w:.2f})" for m, w in zip(report.members, report.weights))))
    models = list(report.table["model"])
    rows = report.table.set_index("model")
    metrics = shown_metrics(report.table)
    print("\n".join(_side_by_side(
        [[f"{rows.loc[model, f'val_{m}']:.3f}" for model in models] for m in metrics],
        [[test_value(model, m, rows.loc[model, f"test_{m}"]) for model in models]
         for m in metrics], models, report.chosen_on, metrics)))
    if report.intervals is not None:
        for line in note_lines(report.intervals):  # why a cell says [no interval], once
            print(line)
        ens = report.intervals[report.intervals.model == "ensemble"].set_index("metric")
        if report.threshold is not None:
            print(f"operating point (chosen on {report.chosen_on} predictions): threshold "
                  f"{report.threshold:.4f} on the calibrated positive probability")
        chosen = []
        if report.temperature is not None:
            chosen.append(f"temperature (fitted on {report.chosen_on} predictions): "
                          f"{report.temperature:.3f}")
        for fit in report.head_fits:
            if fit.referral is not None:
                print(f"head {fit.name} (fitted on {report.chosen_on} predictions): "
                      f"temperature {fit.temperature:.3f}; refer: "
                      + _refer_text(fit.referral, report.chosen_on))
        if chosen:
            print("; ".join(chosen))
        if report.referral is not None:
            print("refer rule: " + _refer_text(report.referral, report.chosen_on))
        if report.ood is not None:
            print(ood_line(report.ood, report.ood_test_flagged))
        for group in EXTRA_GROUPS:
            shown = []
            for m in (m for m in group if m in ens.index):
                point, low, high = ens.loc[m, ["point", "low", "high"]]
                shown.append(f"{m} " + figure_text(m, point, low, high,
                                                   note=row_note(ens.loc[m])))
            if shown:
                print("  ensemble test: " + "; ".join(shown))
        for line in set_lines(report.sets, ens, report.chosen_on):
            print(line)
        if report.patient_line:
            print(report.patient_line)
        if report.subgroup_line:
            print(report.subgroup_line)
    # registered only after the logged model answered every test image as evaluated
    print(f"ensemble run {report.run_id}; model {report.registered}, its served answers "
          f"checked against the evaluated ensemble; {REPORT} in its artifacts")
    print(f"serve it: MLFLOW_TRACKING_URI={report.tracking_uri} mlflow models serve "
          f"-m models:/{report.registered.split(' ')[0]} --env-manager local")


def ood_line(spec, test_flagged: float | None) -> str:
    """The OOD flag in one line: what it is, where its cut comes from, what it flags."""
    rate = (f"a {spec.false_alarm:g} false-alarm rate" if spec.backed else
            f"{spec.false_alarm:g} asked, NOT guaranteed: {spec.held_out_cases} held-out images "
            "are too few")
    tested = "" if test_flagged is None else f"; {test_flagged:.1%} of test images flagged"
    return (f"out-of-distribution flag: Mahalanobis distance of `{spec.layer}` features above "
            f"{spec.cut:.3f} (fitted on {spec.held_out_cases} {spec.scored_on} images at "
            f"{rate}), or a constant image; flagged images are referred{tested}")


def _refer_text(referral: Referral, held: str) -> str:
    """A supported cut with its bound, or the plain line that none is."""
    return (referral.unreachable(held) if referral.refers_everything
            else referral.supported(held))


def set_lines(sets, ens: pd.DataFrame, held: str) -> list[str]:
    """One line per head with prediction sets: nominal and test coverage, mean set size.
    `ens`: the ensemble's test intervals by metric."""
    from orchestrator.clinical.bootstrap import format_interval, row_note

    def shown(metric: str) -> str:
        if metric not in ens.index:
            return "?"
        row = ens.loc[metric]
        return format_interval(row.point, row.low, row.high, note=row_note(row))

    lines = []
    for name, fit in sets:
        p = f"{name}_" if name else ""
        rule = "one quantile per class, " if fit.conditional else ""
        flagged = ("" if not fit.every_class else
                   "; too few held-out cases for the quantile, so every set holds every class"
                   if not fit.conditional else
                   f"; too few held-out cases for {len(fit.every_class)} class quantile(s), "
                   "so those classes are in every set")
        lines.append(f"{f'head {name} ' if name else ''}prediction sets ({fit.coverage:.0%} "
                     f"nominal, {rule}fitted on {held} predictions): test coverage "
                     f"{shown(f'{p}set_coverage')}, mean set size {shown(f'{p}set_size_mean')}"
                     f"{flagged}")
    return lines


def _side_by_side(held: list[list[str]], test: list[list[str]], models: list[str],
                  held_name: str, metrics: list[str]) -> list[str]:
    """One row per metric: each model's held-out figure, then each model's test figure, under
    two header lines (the split, then the model)."""
    def widths(cells: list[list[str]]) -> list[int]:
        return [max(len(models[i]), *(len(row[i]) for row in cells)) for i in range(len(models))]

    held_w, test_w, name_w = widths(held), widths(test), max(map(len, metrics))
    held_span = sum(held_w) + 2 * (len(models) - 1)

    def row(name: str, left: list[str], right: list[str]) -> str:
        return "  ".join([name.ljust(name_w), "  ".join(c.rjust(w) for c, w in zip(left, held_w)),
                          "  ".join(c.rjust(w) for c, w in zip(right, test_w))]).rstrip()

    lines = ["  ".join([" " * name_w, held_name.ljust(held_span), "test [95% CI]"]),
             row("metric", models, models)]
    lines += [row(m, left, right) for m, left, right in zip(metrics, held, test)]
    return lines
