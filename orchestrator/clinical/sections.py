"""The words and tables of report.html: each section built from figures `evaluate` has already
computed (nothing here fits or measures anything)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical.bootstrap import (MIN_GROUPS, NO_INTERVAL, format_interval,
                                             no_interval_lines, row_note)
from orchestrator.clinical.calibration import (apply_temperature, calibration_sentence,
                                               confidence_gap)
from orchestrator.clinical.conformal import (SetFit, coverage_range, min_cases, quantile_rank,
                                             safe_name)
from orchestrator.clinical.evaluated import evaluated_heads
from orchestrator.clinical.html import Section
from orchestrator.clinical.referral import CANDIDATE_CUTS, Referral
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.result import HeadFit
from tasks.base import Task

ENSEMBLE = "ensemble"
BEST_SINGLE = "best_single"


def _interval_table(intervals: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    shown = intervals[intervals.metric.isin(names)]
    table = shown.assign(value=[format_interval(r.point, r.low, r.high, note=row_note(r))
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
            f"{format_interval(cov.point, cov.low, cov.high, note=row_note(cov))} accepted, "
            f"accuracy of the accepted "
            f"{format_interval(acc.point, acc.low, acc.high, note=row_note(acc))}.")


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
    board = inputs.leaderboard.drop(columns=["label"], errors="ignore")
    sections.append(Section(f"Trials (by {metric})", tables=[board]))
    sections.append(Section(
        "Cases to review",
        ["The test cases the ensemble is least sure about (calibrated probabilities), for a "
         "person to look at: review_low_confidence.csv."], tables=[review]))
    return sections


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
    board = inputs.leaderboard.drop(columns=["label"], errors="ignore")
    out.append(Section(f"Trials (by {metric})", tables=[board]))
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


def report_sections(inputs, options, report: Report) -> list[Section]:
    """report.html's layout: a single-label task's one answer, or a section per head; the
    prediction sets and the out-of-distribution flag before the figures."""
    return with_sets_section(_layout_sections(inputs, options, report),
                             sets_section(inputs, report.fits, report.intervals)
                             + ood_section(inputs, report.intervals))


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


# --- the out-of-distribution flag ----------------------------------------------------------------
def ood_section(inputs, intervals: pd.DataFrame) -> list[Section]:
    """What the served flag is, where its cut comes from, and how many test images it raises;
    nothing for an evaluation without one."""
    found = inputs.ood
    if found is None:
        return []
    cut, held = found.cut, inputs.held_out
    test = intervals[intervals.model == ENSEMBLE].set_index("metric")
    share = (format_interval(test.loc["ood_flagged"].point, test.loc["ood_flagged"].low,
                             test.loc["ood_flagged"].high, note=row_note(test.loc["ood_flagged"]))
             if "ood_flagged" in test.index else f"{found.test_share:.3f}")
    rate = (f"the {1 - cut.false_alarm:.0%} quantile of the scores of {cut.cases} {held} "
            f"images (the stated false-alarm rate, {cut.false_alarm:g}, on images like the "
            f"training data; {cut.held_out_flagged:.1%} of them lie above it)" if cut.backed else
            f"the largest score of {cut.cases} {held} images: too few for a {cut.false_alarm:g} "
            "false-alarm rate, which is therefore NOT guaranteed")
    return [Section("Out-of-distribution flag", [
        f"The served model sets `out_of_distribution` (and `refer`) when the Mahalanobis "
        f"distance of an image's `{found.layer}` features to the nearest training class mean "
        f"(shared, shrunk covariance; each member model's, averaged as their votes are) is "
        f"above {cut.cut:.3f}, or when the image is constant. The cut is {rate}. On test: "
        f"{share} of the images flagged; for a test split drawn like the training data this "
        f"should sit near {cut.false_alarm:g}.",
        "What the flag says: the image is unlike the images the models were trained on. What "
        "it does not say: that its class is one the model knows; an unseen class drawn like "
        "the training images can pass. How it does on shifted images (another task's, noise, "
        "blank, inverted, blurred) is measured by `bench/ood.py` (docs/benchmarks.md), not by "
        "this report."])]


# --- prediction sets ---------------------------------------------------------------------------
SETS_ASSUME = (
    "What the coverage guarantee assumes: the held-out and the test (or new) cases are "
    "exchangeable, i.e. drawn alike from one population; another site, scanner or prevalence "
    "breaks it. It is marginal: {coverage:.0%} of cases, not of each case, and (unless the sets "
    "are class-conditional) not of each class. {source} The members, weights and temperature "
    "were chosen on the same held-out cases, which the guarantee does not account for: the test "
    "coverage is the check.")
SETS_SOURCE = {
    "out-of-fold": "The held-out scores come from the fold models, each scoring the cases it "
                   "did not see, while the test and the served predictions average all of "
                   "them: the averaged ensemble is usually the better model, so its sets tend "
                   "to over-cover, which is not guaranteed.",
    "validation": "The held-out scores come from the same ensemble that answers the test and "
                  "served cases, on the validation split."}


def with_sets_section(out: list[Section], extra: list[Section]) -> list[Section]:
    """`extra` spliced in before the Figures section (or at the end)."""
    at = next((i for i, s in enumerate(out) if s.heading == "Figures"), len(out))
    return out[:at] + extra + out[at:]


def _sets_paragraph(name: str, classes, sets: SetFit, y, intervals: pd.DataFrame, held: str,
                    prefix: str) -> str:
    test = intervals[intervals.model == ENSEMBLE].set_index("metric")

    def shown(metric: str) -> str:
        row = test.loc[f"{prefix}{metric}"]
        return format_interval(row.point, row.low, row.high, note=row_note(row))

    column = (lambda c: f"{name}_{c}") if name else (lambda c: c)
    if sets.conditional:
        rule = ("one quantile per true class, each the score at rank ceil((n + 1) x coverage) "
                "of that class's n held-out scores (class-conditional, 'Mondrian'): "
                + ", ".join(f"{c} {q:.4f} (n = {n})" if q <= 1.0 else f"{c} infinite (n = {n})"
                            for c, q, n in zip(classes, sets.quantiles, sets.cases)))
    else:
        q, n = sets.quantiles[0], sets.cases[0]
        rule = (f"q = {q:.4f}, the score at rank ceil((n + 1) x {sets.coverage}) = "
                f"{quantile_rank(n, sets.coverage)} of the n = {n} held-out scores, smallest "
                "first" if q <= 1.0 else
                f"q is infinite: {n} held-out cases are fewer than the "
                f"{min_cases(sets.coverage)} a {sets.coverage:.0%} quantile needs, so every set "
                "holds every class")
    flagged = [classes[i] for i in sets.every_class] if sets.conditional else []
    warn = (f" Too few held-out cases of {', '.join(flagged)} for a "
            f"{sets.coverage:.0%} quantile (at least {min_cases(sets.coverage)} each): those "
            "classes are in every set." if flagged else "")
    n_test = len(y)
    low, high = (coverage_range(n_test, sets.cases[0], sets.coverage) if not sets.conditional
                 else (float("nan"), float("nan")))
    spread = (f"; if the guarantee holds, a test split of {n_test} cases covers between "
              f"{low:.3f} and {high:.3f} in 99% of draws (beta-binomial)" if low == low else "")
    which = ("that class's own quantile (never empty: nothing is above the most probable "
             "class)" if sets.conditional else
             "the quantile: the classes in order of probability until their cumulative "
             "probability first exceeds it, that class included (never empty)")
    return (f"the served `{column('prediction_set')}` lists, most probable first, the classes "
            f"whose calibrated probability ranked above them is at most {which}; "
            f"`{column('set_size')}` counts them. Split-"
            "conformal adaptive prediction sets at nominal coverage "
            f"{sets.coverage:.0%}, fitted on {held} predictions: a held-out case's score is the "
            f"calibrated probability ranked above its true class; {rule}.{warn} On test: "
            f"coverage (the share of cases whose true class is in its set) "
            f"{shown('set_coverage')}, nominal {sets.coverage:.2f}{spread}; mean set size "
            f"{shown('set_size_mean')}.")


def _sets_tables(classes, sets: SetFit, y, intervals: pd.DataFrame,
                 prefix: str) -> list[pd.DataFrame]:
    test = intervals[intervals.model == ENSEMBLE].set_index("metric")

    def shown(metric: str) -> str:
        row = test.loc[metric]
        return format_interval(row.point, row.low, row.high, note=row_note(row))

    y = np.asarray(y)
    per_class = pd.DataFrame({
        "class": list(classes), "test cases": [int(np.sum(y == k)) for k in range(len(classes))],
        **({"held-out cases": list(sets.cases),
            "quantile": [f"{q:.4f}" if q <= 1.0 else "infinite" for q in sets.quantiles]}
           if sets.conditional else {}),
        "test coverage [95% CI]": [shown(f"{prefix}set_coverage_{safe_name(c)}")
                                   for c in classes]})
    sizes = pd.DataFrame({"set size": list(range(1, len(classes) + 1)),
                          "share of test cases [95% CI]": [
                              shown(f"{prefix}set_size_{k}_share")
                              for k in range(1, len(classes) + 1)]})
    return [per_class, sizes]


def sets_section(inputs, fits: Mapping[str, HeadFit], intervals: pd.DataFrame) -> list[Section]:
    """One section: per classification head its quantile, its test coverage with intervals
    (overall and per class) and the distribution of its set sizes; what the guarantee assumes.
    Nothing when no head has sets."""
    paragraphs, tables, nominal = [], [], None
    for eh in evaluated_heads(inputs.task):
        sets = fits[eh.head.name].sets if eh.head.is_classification else None
        if sets is None:
            continue
        nominal, name, y = sets.coverage, eh.head.name if eh.named else None, \
            eh.targets(inputs.y_test)
        text = _sets_paragraph(name or "", eh.head.classes, sets, y, intervals, inputs.held_out,
                               eh.prefix)
        paragraphs.append(f"Head {name}: {text}" if name else text[0].upper() + text[1:])
        tables += _sets_tables(eh.head.classes, sets, y, intervals, eh.prefix)
    if nominal is None:
        return []
    source = SETS_SOURCE.get(inputs.held_out, "")
    return [Section("Prediction sets", paragraphs + [SETS_ASSUME.format(coverage=nominal,
                                                                       source=source)],
                    tables=tables)]
