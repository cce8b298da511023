"""The clinical evaluation of a multi-head ensemble (`evaluate` hands a multi-head task here).

Its predictions are one (N, D) matrix and its targets (N, heads) (`orchestrator.models.heads`). Per
classification head, fitted on that head's held-out predictions only: a temperature, and a refer
cut on the calibrated confidence of its decision (the most probable class; no threshold, even
for two classes). A regression head has nothing fitted: its value is measured (MAE, RMSE, R² in
its unit). On test, every head's figures and mean_skill with 95% bootstrap intervals (stratified
by the first classification head's class, whole groups), for the ensemble and its baselines, and
the paired difference ensemble minus best single on mean_skill. Grad-CAM and MC dropout are not
drawn: both read a single softmax head's logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.clinical import artifacts, plots
from orchestrator.clinical.bootstrap import (count_units, intervals_by_model, no_interval_lines,
                                             paired_difference, resample_indices,
                                             sound_interval_metrics)
from orchestrator.clinical.calibration import (apply_temperature, brier_score,
                                               expected_calibration_error, fit_temperature, nll)
from orchestrator.clinical.html import write_report
from orchestrator.clinical.referral import choose_refer_cut, decide, referral_figures
from orchestrator.clinical.resampled_metrics import fast_multihead_metrics
from orchestrator.clinical.result import ClinicalResult, HeadFit
from orchestrator.clinical.sections import BEST_SINGLE, ENSEMBLE, multihead_sections
from orchestrator.clinical.uncertainty import entropy
from orchestrator.console import detail
from orchestrator.models.heads import column_slices, split_targets

Log = Callable[[str], None]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def evaluate_multihead(inputs, options, out: Path, log: Log = print):
    task = inputs.task
    y_val = np.asarray(inputs.y_val, dtype=np.float64)
    y_test = np.asarray(inputs.y_test, dtype=np.float64)
    ens_val = np.asarray(inputs.val_probs[ENSEMBLE], dtype=np.float64)
    ens_test = np.asarray(inputs.test_probs[ENSEMBLE], dtype=np.float64)
    slices = column_slices(task)
    val_t, test_t = split_targets(y_val, task), split_targets(y_test, task)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    notes: list[str] = []

    # --- fitted on held-out predictions only, head by head -----------------------------------
    fits: dict[str, HeadFit] = {}
    calibrated = ens_test.copy()  # the served matrix: classification blocks calibrated
    decided: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # head -> test (decision, confidence)
    for head in task.heads:
        if not head.is_classification:
            fits[head.name] = HeadFit(head.name, None, None)
            continue
        s = slices[head.name]
        temperature = fit_temperature(val_t[head.name], ens_val[:, s])
        val_decision, val_confidence = decide(apply_temperature(ens_val[:, s], temperature),
                                              None, None)
        referral = choose_refer_cut(val_t[head.name], val_decision, val_confidence,
                                    options.target_accuracy)
        calibrated[:, s] = apply_temperature(ens_test[:, s], temperature)
        decided[head.name] = decide(calibrated[:, s], None, None)
        fits[head.name] = HeadFit(head.name, temperature, referral)
        detail(log, f"head {head.name}: temperature fitted on {inputs.held_out} predictions "
               f"T = {temperature:.3f}; " + (
                f"refer cut: confidence < {referral.cut:.4f} is referred ({referral.coverage:.1%}"
                f" of held-out cases accepted at accuracy {referral.accuracy:.3f}; target "
                f"{referral.target_accuracy})" if not referral.refers_everything else
                f"refer cut: no confidence reaches accuracy {referral.target_accuracy}, so "
                "every case is referred"))

    # --- measured on test, with intervals ----------------------------------------------------
    first = next(i for i, h in enumerate(task.heads) if h.is_classification)
    resamples = resample_indices(y_test[:, first].astype(np.int64), inputs.test_groups,
                                 options.resamples, options.seed)
    units = count_units(y_test, inputs.test_groups)

    def ensemble_metrics(idx: np.ndarray) -> dict[str, float]:
        out_ = fast_multihead_metrics(y_test[idx], ens_test[idx], task)
        for head in task.heads:
            if not head.is_classification:
                continue
            name, s, cut = head.name, slices[head.name], fits[head.name].referral.cut
            t, raw, cal = test_t[name][idx], ens_test[idx, s], calibrated[idx, s]
            decision, confidence = decided[name]
            out_.update({f"{name}_{k}_at_refer_cut": v for k, v in referral_figures(
                t, decision[idx], confidence[idx], cut).items()})
            out_.update({f"{name}_brier": brier_score(t, raw),
                         f"{name}_ece": expected_calibration_error(t, raw),
                         f"{name}_nll": nll(t, raw), f"{name}_brier_calibrated": brier_score(t, cal),
                         f"{name}_ece_calibrated": expected_calibration_error(t, cal),
                         f"{name}_nll_calibrated": nll(t, cal)})
        return out_

    intervals = intervals_by_model(
        {k: np.asarray(v, dtype=np.float64) for k, v in inputs.test_probs.items()}, ENSEMBLE,
        ensemble_metrics, lambda idx, p: fast_multihead_metrics(y_test[idx], p[idx], task),
        resamples, units)
    difference = None
    if BEST_SINGLE in inputs.test_probs:
        difference = paired_difference(
            lambda y, p: fast_multihead_metrics(y, p, task)[task.metric], y_test, ens_test,
            np.asarray(inputs.test_probs[BEST_SINGLE], dtype=np.float64), resamples,
            units=units)
    files.append(out / artifacts.TEST_METRICS)
    intervals.to_csv(files[-1], index=False)
    groups_note = ("whole groups (patient / lesion) resampled" if len(np.unique(
        inputs.test_groups)) < len(y_test) else "each image its own group")
    log(f"bootstrap: {options.resamples} resamples of the test split stratified by the "
        f"{task.heads[first].name} class, {groups_note}")
    interval_notes = no_interval_lines(intervals, difference, task.metric)
    for line in interval_notes:
        log(line)

    # --- figures ------------------------------------------------------------------------------
    head_figures: dict[str, list[Path]] = {}
    for head in task.heads:
        name, s = head.name, slices[head.name]

        def named(kind: str, head_name: str = name) -> Path:
            return out / artifacts.per_head(kind, _safe(head_name))

        if head.is_classification:
            head_figures[name] = [
                plots.confusion_matrices(test_t[name], decided[name][0], list(head.classes),
                                         named(artifacts.CONFUSION_MATRIX),
                                         f"{name}, test"),
                plots.reliability_diagram(test_t[name], ens_test[:, s], calibrated[:, s],
                                          named(artifacts.RELIABILITY_DIAGRAM),
                                          temperature=fits[name].temperature,
                                          title=f"{name}, test")]
        else:
            head_figures[name] = [plots.regression_scatter(
                test_t[name], ens_test[:, s][:, 0], named(artifacts.SCATTER),
                unit=head.unit, title=f"{name}, test")]
    metric = next(c for c in inputs.leaderboard.columns if c.startswith("best_"))
    figures = [plots.trial_comparison(inputs.leaderboard, metric, out / artifacts.TRIAL_COMPARISON,
                                      [m.name for m in inputs.members])]
    if options.mc_dropout_passes:
        notes.append("MC dropout is not computed for a multi-head ensemble")
        log(f"MC dropout: {notes[-1]}")

    review = review_table(inputs.test_paths, y_test, calibrated, task, options.review_cases)
    files.append(out / artifacts.REVIEW)
    review.to_csv(files[-1], index=False)
    files += [p for h in task.heads for p in head_figures[h.name]] + figures

    # --- the flat metrics for MLflow ---------------------------------------------------------
    metrics: dict[str, float] = {}
    metrics.update(sound_interval_metrics(intervals[intervals.model == ENSEMBLE], difference,
                                          task.metric))
    for name, fit in fits.items():
        if fit.referral is None:
            continue
        metrics.update({f"{name}_temperature": fit.temperature,
                        f"{name}_refer_cut": fit.referral.cut,
                        f"{name}_val_coverage_at_refer_cut": fit.referral.coverage,
                        f"{name}_val_accuracy_accepted_at_refer_cut": fit.referral.accuracy})

    report_sections = multihead_sections(inputs, options, fits, intervals, head_figures, figures,
                                         review, groups_note, metric, difference)
    banner = ("SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES. These figures say nothing about "
              "real patients.") if inputs.synthetic else None
    files.append(write_report(out / artifacts.REPORT, inputs.title, report_sections, banner))
    return ClinicalResult(files, metrics, intervals, float("nan"), None, None, calibrated,
                          notes, fits, interval_notes)


def review_table(paths, y: np.ndarray, calibrated: np.ndarray, task, n: int = 20,
                 ) -> pd.DataFrame:
    """The `n` test cases whose least sure classification head is least sure (its calibrated
    confidence, lowest first), with every head's truth and answer beside it."""
    targets = split_targets(y, task)
    slices = column_slices(task)
    columns: dict[str, object] = {"path": list(paths)}
    lowest = np.full(len(y), np.inf)
    for head in task.heads:
        name, block = head.name, calibrated[:, slices[head.name]]
        if head.is_classification:
            pred = block.argmax(axis=1)
            confidence = block.max(axis=1)
            lowest = np.minimum(lowest, confidence)
            columns.update({
                f"{name}_true": [head.classes[k] for k in targets[name]],
                f"{name}_predicted": [head.classes[k] for k in pred],
                f"{name}_correct": pred == targets[name], f"{name}_confidence": confidence,
                f"{name}_entropy": entropy(block)})
        else:
            columns.update({f"{name}_true": targets[name], f"{name}_predicted": block[:, 0],
                            f"{name}_abs_error": np.abs(block[:, 0] - targets[name])})
    frame = pd.DataFrame(columns)
    frame.insert(1, "lowest_confidence", lowest)
    frame = frame.sort_values("lowest_confidence", kind="mergesort")
    return frame.head(n).reset_index(drop=True)
