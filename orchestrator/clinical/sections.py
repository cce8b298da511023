"""The words and tables of report.html: each section built from figures `evaluate` has already
computed (nothing here fits or measures anything)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from orchestrator.clinical.bootstrap import (MIN_GROUPS, NO_INTERVAL, figure_text,
                                             no_interval_lines, row_note)
from orchestrator.clinical.calibration import (apply_temperature, calibration_sentence,
                                               confidence_gap)
from orchestrator.clinical.answer_sections import ood_section, sets_section
from orchestrator.clinical.flow_sections import (characteristics_section, flow_section,
                                                  gallery_section)
from orchestrator.clinical.html import Section
from orchestrator.clinical.patient_sections import PerPatient, patient_section
from orchestrator.clinical.referral import CANDIDATE_CUTS, Referral
from orchestrator.clinical.subgroup_sections import subgroup_section
from orchestrator.clinical.subgroups import Subgroups
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.result import HeadFit
from tasks.base import Task

ENSEMBLE = "ensemble"
BEST_SINGLE = "best_single"


def _interval_table(intervals: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    shown = intervals[intervals.metric.isin(names)]
    table = shown.assign(value=[figure_text(r.metric, r.point, r.low, r.high, note=row_note(r))
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
    if difference.get("note"):  # no interval, so no verdict either
        return (f" Ensemble minus best single configuration, {task.metric} on the same test "
                f"cases: {difference['point']:+.3f} {NO_INTERVAL} ({difference['note']}); "
                "this test split cannot tell whether the ensemble beats the best single "
                "configuration.")
    low, high = difference["low"], difference["high"]
    verdict = ("better than" if low > 0 else "worse than" if high < 0 else
               "not distinguishable from")
    return (f" Ensemble minus best single configuration, {task.metric} on the same resampled "
            f"test cases (paired): {difference['point']:+.3f} [{low:+.3f}, {high:+.3f}]; "
            f"the ensemble is {verdict} the best single configuration on this test split.")


def _referral_text(referral: Referral, held: str, intervals: pd.DataFrame,
                   prefix: str = "") -> str:
    """`prefix`: a head's (`shape_`), whose figures the intervals name so."""
    rule = (f" The cut is the lowest of {len(CANDIDATE_CUTS)} candidate cuts, fixed in "
            f"advance, whose accepted {held} cases have a one-sided Clopper-Pearson lower bound "
            f"on their accuracy at or above the target, each tested at level "
            f"{1 - referral.confidence_level:.2g}/{len(CANDIDATE_CUTS)}: with probability at "
            f"least {referral.confidence_level:.0%} every accepted cut's bound holds at once, "
            "so the chosen one's does.")
    if referral.refers_everything:
        text = referral.unreachable(held)
        return ("The served model refers every case to a person: " + text + "." + rule)
    test = intervals[intervals.model == ENSEMBLE].set_index("metric")
    cov = test.loc[f"{prefix}coverage_at_refer_cut"]
    acc = test.loc[f"{prefix}accuracy_accepted_at_refer_cut"]
    return (f"The served model refers a case to a person when its calibrated confidence (the "
            f"probability of its decision) is below {referral.cut:.4f}: "
            f"{referral.coverage:.1%} of {referral.cases} {held} cases accepted, accuracy "
            f"{referral.accuracy:.3f}, {referral.confidence_level:.0%} lower bound "
            f"{referral.lower_bound:.3f} (target {referral.target_accuracy})." + rule
            + " On test: "
            f"{figure_text(cov.name, cov.point, cov.low, cov.high, note=row_note(cov))} "
            f"accepted, accuracy of the accepted "
            f"{figure_text(acc.name, acc.point, acc.low, acc.high, note=row_note(acc))}.")


def _notes_text(intervals: pd.DataFrame, difference: dict | None, metric: str) -> str:
    """Why some figures below show no interval, said once (the cells only say `[no
    interval]`); "" when every interval is sound."""
    lines = no_interval_lines(intervals, difference, metric)
    if not lines:
        return ""
    why = []
    if any(line.startswith("test holds") for line in lines):
        why.append(f"A percentile bootstrap needs at least {MIN_GROUPS} groups (patients, "
                   "lesions or duplicate clusters; each image its own group where the task has "
                   "none) before its interval says how far a figure could move; with fewer it "
                   "is too narrow, so only the point is shown.")
    if any(line.startswith("zero-width") for line in lines):
        why.append("A zero-width interval at a value the figure could move away from only "
                   "says the resamples never varied, not that the figure is exact.")
    text = "; ".join(lines)
    return " " + text[0].upper() + text[1:] + ". " + " ".join(why)


def _ensemble_sections(inputs) -> list[Section]:
    """The ensemble's composition and what was left out of the data: the report's opening."""
    composition = pd.DataFrame([{"member": m.name, "weight": m.weight,
                                 "resolution": m.resolution} for m in inputs.members])
    held = inputs.held_out
    source = ("the out-of-fold predictions of the cross-validated finalists (each member is "
              "its fold models averaged)" if held == "out-of-fold" else "the validation split")
    single = [m.name for m in inputs.members]
    same = (f" The ensemble is the best single configuration ({single[0]}): no addition "
            f"improved the {held} score.") if len(single) == 1 else ""
    return [
        Section("Ensemble", [f"Task {inputs.task.key}; TTA policy {inputs.policy}; TTA policy, "
                             f"members and weights chosen on {source} only (Caruana "
                             f"selection).{same}"],
                tables=[composition]),
        *([Section("Data", list(inputs.data_notes))] if inputs.data_notes else []),
    ]


def sections(inputs, options, op, temperature, intervals, figures, review, groups_note,
              metric, referral: Referral, difference: dict | None) -> list[Section]:
    names = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc"]
    val_rows = pd.DataFrame([{"model": name, **fast_metrics(inputs.y_val, probs,
                                                            inputs.task.positive_index)}
                             for name, probs in inputs.val_probs.items()])
    held = inputs.held_out
    sections = [
        *_ensemble_sections(inputs),
        Section(f"{held.capitalize()} predictions (where every choice was made)",
                tables=[val_rows]),
        Section("Test, with 95% bootstrap intervals",
                [f"{options.resamples} resamples, stratified by class, {groups_note}. "
                 "The test split was predicted once, after every choice was fixed. Grad-CAM "
                 "maps and MC-dropout figures also read test images; they are drawn after "
                 "that and feed no choice." + _difference_text(inputs.task, difference)
                 + _notes_text(intervals, difference, inputs.task.metric)],
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
    sections.append(trials_section(inputs.leaderboard, metric))
    sections.append(Section(
        "Cases to review",
        ["The test cases the ensemble is least sure about (calibrated probabilities), for a "
         "person to look at: review_low_confidence.csv."], tables=[review]))
    return sections


def trials_section(leaderboard: pd.DataFrame, metric: str) -> Section:
    """The search trials by their short names (`t03`), best first; a column equal in every
    trial is said once above the table instead, so the table stays narrow."""
    board = leaderboard.drop(columns=["label"], errors="ignore")
    same = [c for c in board.columns if c != "trial" and len(board) > 1
            and board[c].astype(str).nunique() == 1]
    said = ([f"The same in every trial: {', '.join(f'{c} {board[c].iloc[0]}' for c in same)}."]
            if same else [])
    return Section(f"Trials (by {metric})", said, tables=[board.drop(columns=same)])


# --- a multi-head ensemble ---------------------------------------------------------------------
CLASSIFICATION_SHOWN = ("balanced_accuracy", "accuracy", "macro_f1", "loss", "skill")
CALIBRATION_SHOWN = ("brier", "brier_calibrated", "ece", "ece_calibrated", "nll",
                     "nll_calibrated", "coverage_at_refer_cut", "accuracy_accepted_at_refer_cut")
REGRESSION_SHOWN = ("mae", "rmse", "r2", "skill")


def _by_metric(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows `model` x metric columns -> one row per metric, one column per model."""
    return (frame.set_index("model").T.reset_index().rename(columns={"index": "metric"})
            .rename_axis(columns=None))


def _head_section(head, fit, inputs, intervals, figures, held: str) -> Section:
    from orchestrator.models.heads import column_slices, split_targets

    name = head.name
    if not head.is_classification:
        unit = head.unit or "the head's unit"
        return Section(
            f"Head {name}: regression, in {unit}",
            [f"Nothing is fitted for a regression head: the served `{name}_value` is the "
             f"members' weighted mean value (each member's own TTA mean), in {unit}. MAE and "
             f"RMSE are in {unit}; R² is 1 - squared error / variance of the true test values, "
             "and is the head's skill (0: no better than the mean, 1: perfect). Test figures "
             "with 95% bootstrap intervals; the scatter plot shows every test case against "
             "the identity line."],
            tables=[_interval_table(intervals, [f"{name}_{m}" for m in REGRESSION_SHOWN])],
            figures=figures)
    y = split_targets(inputs.y_test, inputs.task)[name]
    raw = inputs.test_probs[ENSEMBLE][:, column_slices(inputs.task)[name]]
    two = (" With two classes too: a head of a multi-head model has no threshold rule."
           if len(head.classes) == 2 else "")
    return Section(
        f"Head {name}: classification, {len(head.classes)} classes "
        f"({', '.join(head.classes)})",
        [f"The served `{name}_decision` is the most probable class after this head's own "
         f"temperature scaling, and `{name}_confidence` its calibrated probability.{two} "
         f"Skill is balanced accuracy rescaled so that chance (1/{len(head.classes)}) is 0.",
         calibration_sentence(fit.temperature, held, confidence_gap(y, raw),
                              confidence_gap(y, apply_temperature(raw, fit.temperature))),
         f"Referral on this head (`{name}_refer`): "
         + _referral_text(fit.referral, held, intervals, prefix=f"{name}_")],
        tables=[_interval_table(intervals, [f"{name}_{m}" for m in CLASSIFICATION_SHOWN]),
                _interval_table(intervals[intervals.model == ENSEMBLE],
                                [f"{name}_{m}" for m in CALIBRATION_SHOWN])],
        figures=figures)


def multihead_sections(inputs, options, fits, intervals, head_figures, figures, review,
                       groups_note, metric, difference: dict | None) -> list[Section]:
    """report.html of a multi-head ensemble: the summary over heads, then a section per head
    (its classes or unit, test figures with intervals, its figures)."""
    from orchestrator.metrics import multihead_metrics

    task, held = inputs.task, inputs.held_out
    first = next(h for h in task.heads if h.is_classification)
    val_rows = _by_metric(pd.DataFrame([{"model": name, **multihead_metrics(inputs.y_val, probs,
                                                                             task)}
                                        for name, probs in inputs.val_probs.items()]))
    heads = "; ".join(f"{h.name} ({', '.join(h.classes)})" if h.is_classification else
                      f"{h.name} ({h.unit or 'no unit'})" for h in task.heads)
    out = [
        *_ensemble_sections(inputs),
        Section(f"{held.capitalize()} predictions (where every choice was made)",
                [f"Heads: {heads}. Every head's figures, and mean_skill, the mean of the "
                 "heads' skills that chose the ensemble."], tables=[val_rows]),
        Section("Test, with 95% bootstrap intervals",
                [f"{options.resamples} resamples, stratified by the class of the first "
                 f"classification head ({first.name}), {groups_note}. The test split was "
                 "predicted once, after every choice was fixed. mean_skill is the mean over "
                 "heads of each head's skill (a classification head's balanced accuracy "
                 "rescaled so that chance is 0, a regression head's R²); loss the mean of each "
                 "head's log loss or squared error over the variance of its values."
                 + _difference_text(task, difference)
                 + _notes_text(intervals, difference, task.metric)],
                tables=[_interval_table(intervals, ["mean_skill", "loss"])]),
    ]
    out += [_head_section(h, fits[h.name], inputs, intervals, head_figures[h.name], held)
            for h in task.heads]
    out.append(Section("Explanations", [
        "Grad-CAM maps and MC-dropout figures are not drawn for a multi-head ensemble: both "
        "read a single softmax head's logits."]))
    out.append(Section("Figures", figures=figures))
    out.append(trials_section(inputs.leaderboard, metric))
    out.append(Section(
        "Cases to review",
        ["The test cases whose least confident classification head is least sure (calibrated "
         "probabilities), every head's answer beside the truth, for a person to look at: "
         "review_low_confidence.csv."], tables=[review]))
    return out


@dataclass(frozen=True)
class Report:
    """What `evaluate` hands the report: per head its fit and figures, the rest shared."""

    fits: Mapping[str, HeadFit]
    intervals: pd.DataFrame
    head_figures: Mapping[str, list[Path]]
    figures: list[Path]  # the trial comparison, Grad-CAM
    review: pd.DataFrame
    groups_note: str
    metric: str
    difference: dict | None
    patients: PerPatient | None = None  # the test split per group (patient, lesion)
    subgroups: Subgroups | None = None  # the test split per subgroup value (--subgroup)
    gallery: tuple | None = None  # (figure or None, errors shown, member): a single answer


def report_sections(inputs, options, report: Report) -> list[Section]:
    """report.html's layout: a single-label task's one answer, or a section per head; the
    prediction sets, the out-of-distribution flag and the per-patient figures before the
    figures."""
    test = report.intervals[report.intervals.model == ENSEMBLE].set_index("metric")
    patients = ([patient_section(report.patients, inputs.held_out, options.resamples)]
                if report.patients is not None else [])
    if report.subgroups is not None:
        patients.append(subgroup_section(report.subgroups))
    if report.gallery is not None:
        patients.append(gallery_section(*report.gallery))
    return with_data_sections(inputs, with_sets_section(
        _layout_sections(inputs, options, report),
        sets_section(inputs, report.fits, test) + ood_section(inputs, test) + patients))


def with_data_sections(inputs, out: list[Section]) -> list[Section]:
    """The participant flow and each split's characteristics, after the opening sections
    (Ensemble, Data), where the recorded data are known."""
    extra = ([flow_section(inputs.flow, inputs.copies_kept_apart)] if inputs.flow else []) + (
        [characteristics_section(inputs.split_table)] if inputs.split_table is not None else [])
    at = next((i + 1 for i, s in enumerate(out) if s.heading == "Data"), 1)
    return out[:at] + extra + out[at:]


def _layout_sections(inputs, options, report: Report) -> list[Section]:
    if inputs.task.heads:
        return multihead_sections(inputs, options, report.fits, report.intervals,
                                  report.head_figures, report.figures, report.review,
                                  report.groups_note, report.metric, report.difference)
    (fit,) = report.fits.values()
    figures = [p for paths in report.head_figures.values() for p in paths] + report.figures
    return sections(inputs, options, fit.operating_point, fit.temperature, report.intervals,
                    figures, report.review, report.groups_note, report.metric, fit.referral,
                    report.difference)


def with_sets_section(out: list[Section], extra: list[Section]) -> list[Section]:
    """`extra` spliced in before the Figures section (or at the end)."""
    at = next((i for i, s in enumerate(out) if s.heading == "Figures"), len(out))
    return out[:at] + extra + out[at:]
