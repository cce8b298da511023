"""The clinical evaluation of a final ensemble: fit on validation (threshold, temperature),
measure on test with bootstrap intervals, draw, explain, list the cases to review, write
report.html. Called by `orchestrator.ensemble.build` after every choice is fixed; returns the
files to log and the figures to record. Every task is evaluated head by head (a single-label
task is one head, `heads.evaluated_heads`); what a head's kind fits, measures and draws is in
`heads.py`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical import artifacts, plots
from orchestrator.clinical.bootstrap import (count_units, intervals_by_model,
                                             no_interval_lines, paired_difference,
                                             resample_indices, sound_interval_metrics)
from orchestrator.clinical.evaluated import evaluated_heads
from orchestrator.clinical.failures import failure_gallery
from orchestrator.clinical.flow import Flow
from orchestrator.clinical.heads import KINDS, review_table
from orchestrator.clinical.html import write_report
from orchestrator.clinical.operating_point import threshold_table
from orchestrator.clinical.ood import OodEvaluated
from orchestrator.clinical.options import ClinicalOptions
from orchestrator.clinical.patient_sections import patient_line
from orchestrator.clinical.per_patient import per_patient
from orchestrator.clinical.result import ClinicalResult
from orchestrator.clinical.subgroup_sections import subgroup_line
from orchestrator.clinical.subgroups import ensemble_subgroups
from orchestrator.clinical.sections import BEST_SINGLE, ENSEMBLE, Report, report_sections
from orchestrator.clinical.uncertainty import ensemble_mc, mc_dropout_probs, mc_summary
from orchestrator.clinical.weighted_metrics import weighted_task_metrics
from orchestrator.console import detail
from tasks.base import Task

Log = Callable[[str], None]


@dataclass(frozen=True)
class Member:
    name: str
    weight: float
    model_path: str
    resolution: int


@dataclass
class ClinicalInputs:
    task: Task
    y_val: np.ndarray
    y_test: np.ndarray
    # model row ("ensemble", "best_single", ...) -> (N, C); a multi-head task's (N, D) matrix
    # (orchestrator.models.heads), with (N, heads) targets in y_val / y_test
    val_probs: Mapping[str, np.ndarray]
    test_probs: Mapping[str, np.ndarray]
    test_groups: np.ndarray
    test_paths: Sequence[str]  # relative to the data root: the review CSV is read elsewhere
    test_images: Mapping[int, np.ndarray]  # resolution -> (N, R, R, 3) uint8
    members: Sequence[Member]
    policy: str
    leaderboard: pd.DataFrame  # trial, label, best_<metric>, status, ...
    synthetic: bool
    title: str
    data_notes: Sequence[str] = ()  # what was left out or grouped before splitting
    held_out: str = "validation"  # what y_val/val_probs are: "validation" or "out-of-fold"
    ood: OodEvaluated | None = None  # the served OOD flag, fitted before the evaluation
    val_groups: np.ndarray | None = None  # the held-out images' groups (None: not known)
    # subgroup name -> each test image's value (the manifest's `subgroup_<name>` columns):
    # measured per value in the report, read by nothing that chooses
    subgroups: Mapping[str, np.ndarray] = field(default_factory=dict)
    # the recorded data's participant flow and each split's characteristics (None: not known)
    flow: Flow | None = None
    split_table: pd.DataFrame | None = None
    copies_kept_apart: bool = False  # the sweep ran with --keep-duplicates


def evaluate(inputs: ClinicalInputs, options: ClinicalOptions, out: Path,
             log: Log = print) -> ClinicalResult:
    """Every head the same way: fitted on held-out predictions, measured on test with
    intervals, drawn, its cases listed; then one report (`heads.KINDS` says what a head's kind
    fits, measures and draws)."""
    task = inputs.task
    out.mkdir(parents=True, exist_ok=True)
    ens_val = np.asarray(inputs.val_probs[ENSEMBLE], dtype=np.float64)
    ens_test = np.asarray(inputs.test_probs[ENSEMBLE], dtype=np.float64)
    evaluated = evaluated_heads(task)
    fits, calibrated, decided = {}, ens_test.copy(), {}
    files: list[Path] = []
    for eh in evaluated:
        kind = KINDS[eh.head.kind]
        fits[eh.head.name] = fit = kind.fit(eh, eh.targets(inputs.y_val), ens_val[:, eh.columns],
                                            options, inputs.held_out, log, inputs.val_groups)
        calibrated[:, eh.columns] = kind.calibrate(fit, ens_test[:, eh.columns])
        decided[eh.head.name] = kind.decide(eh, fit, calibrated[:, eh.columns])
        if fit.operating_point is not None:
            files.append(_threshold_table(eh, inputs, ens_val, calibrated, fit, out))
    measured = _measure(inputs, options, evaluated, fits, calibrated, decided, log)
    files.append(out / artifacts.TEST_METRICS)
    measured.intervals.to_csv(files[-1], index=False)

    figures = {eh.head.name: KINDS[eh.head.kind].figures(
        eh, fits[eh.head.name], eh.targets(inputs.y_test), ens_test[:, eh.columns],
        calibrated[:, eh.columns], decided[eh.head.name], out) for eh in evaluated}
    metric = next(c for c in inputs.leaderboard.columns if c.startswith("best_"))
    shared = [plots.trial_comparison(inputs.leaderboard, metric, out / artifacts.TRIAL_COMPARISON,
                                     [m.name for m in inputs.members])]
    explained = _explanations(inputs, options, evaluated, decided, out, log)
    review = review_table(inputs.test_paths, evaluated, inputs.y_test, calibrated,
                          options.review_cases, explained.mc_entropy)
    files.append(out / artifacts.REVIEW)
    review.to_csv(files[-1], index=False)
    files += [p for eh in evaluated for p in figures[eh.head.name]] + shared + explained.figures
    if explained.gallery is not None and explained.gallery[0] is not None:
        files.append(explained.gallery[0])
    patients = per_patient(inputs, options, evaluated, fits, calibrated, out)
    files += patients.write(out)

    metrics = dict(explained.metrics)
    metrics.update(patients.metrics())
    metrics.update(sound_interval_metrics(measured.intervals[measured.intervals.model == ENSEMBLE],
                                          measured.difference, task.metric))
    for eh in evaluated:
        metrics.update(KINDS[eh.head.kind].fitted_metrics(eh, fits[eh.head.name]))
    if inputs.ood is not None:
        metrics.update({"ood_cut": inputs.ood.cut.cut,
                        "ood_false_alarm_nominal": inputs.ood.cut.false_alarm,
                        "val_ood_flagged": inputs.ood.cut.held_out_flagged})
    by_subgroup = ensemble_subgroups(inputs, options, evaluated, decided)
    if by_subgroup is not None:
        files.append(out / artifacts.TEST_METRICS_BY_SUBGROUP)
        by_subgroup.table.to_csv(files[-1], index=False)
    report = Report(fits, measured.intervals, figures, shared + explained.figures, review,
                    measured.groups_note, metric, measured.difference, patients, by_subgroup,
                    explained.gallery)
    banner = ("SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES. These figures say nothing about "
              "real patients.") if inputs.synthetic else None
    files.append(write_report(out / artifacts.REPORT, inputs.title,
                              report_sections(inputs, options, report), banner))
    return ClinicalResult(files, metrics, measured.intervals, calibrated,
                          answer=next((fits[eh.head.name] for eh in evaluated if not eh.named),
                                      None),
                          heads={eh.head.name: fits[eh.head.name] for eh in evaluated
                                 if eh.named},
                          notes=explained.notes, interval_notes=measured.interval_notes,
                          patient_line=patient_line(patients, task.metric, inputs.held_out),
                          subgroup_line=subgroup_line(by_subgroup))


def _threshold_table(eh, inputs: ClinicalInputs, ens_val, calibrated, fit, out: Path) -> Path:
    """The operating point's trade-off on held-out and test predictions (both calibrated)."""
    kind, pos = KINDS[eh.head.kind], eh.positive
    val_calibrated = kind.calibrate(fit, ens_val[:, eh.columns])
    table = threshold_table(eh.targets(inputs.y_val) == pos, val_calibrated[:, pos],
                            eh.targets(inputs.y_test) == pos, calibrated[:, eh.columns][:, pos],
                            chosen=fit.operating_point.threshold)
    path = out / artifacts.THRESHOLD_TABLE
    table.to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class Measured:
    intervals: pd.DataFrame
    difference: dict | None
    groups_note: str
    interval_notes: list[str]


def _measure(inputs: ClinicalInputs, options: ClinicalOptions, evaluated, fits, calibrated,
             decided, log: Log) -> Measured:
    """The test figures of every model with bootstrap intervals (stratified by the first
    classification head's class, whole groups), and ensemble minus best single."""
    task, y_test = inputs.task, np.asarray(inputs.y_test)
    ens_test = np.asarray(inputs.test_probs[ENSEMBLE], dtype=np.float64)
    first = next(eh for eh in evaluated if eh.head.is_classification)
    resamples = resample_indices(first.targets(y_test), inputs.test_groups, options.resamples,
                                 options.seed)
    units = count_units(y_test, inputs.test_groups)

    def ensemble_metrics(idx: np.ndarray) -> dict[str, float]:
        """The ensemble's figures beyond the task's (those are every row's, `weighted`)."""
        out: dict[str, float] = {}
        for eh in evaluated:
            d = decided[eh.head.name]
            out.update(KINDS[eh.head.kind].ensemble_metrics(
                eh, fits[eh.head.name], eh.targets(y_test)[idx], ens_test[idx, eh.columns],
                calibrated[idx, eh.columns], None if d is None else (d[0][idx], d[1][idx])))
        if inputs.ood is not None:  # the share of test images the served flag raises
            out["ood_flagged"] = float(inputs.ood.test_flagged[idx].mean())
        return out

    probs = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.test_probs.items()}
    intervals = intervals_by_model(
        probs, ENSEMBLE, ensemble_metrics,
        lambda counts, p: weighted_task_metrics(y_test, p, counts, task), resamples, units)
    difference = None
    if BEST_SINGLE in probs:
        difference = paired_difference(
            lambda y, p, counts: weighted_task_metrics(y, p, counts, task)[task.metric],
            y_test, ens_test, probs[BEST_SINGLE], resamples, units=units)
    groups_note = ("whole groups (patient / lesion) resampled" if len(np.unique(
        inputs.test_groups)) < len(y_test) else "each image its own group")
    stratum = f"the {first.head.name} class" if first.named else "class"
    detail(log, f"bootstrap: {options.resamples} resamples of the test split stratified by "
                f"{stratum}, {groups_note}")
    interval_notes = no_interval_lines(intervals, difference, task.metric)
    for line in interval_notes:
        log(line)
    return Measured(intervals, difference, groups_note, interval_notes)


@dataclass(frozen=True)
class Explained:
    figures: list[Path]
    metrics: dict[str, float]
    notes: list[str]
    mc_entropy: np.ndarray | None = None
    gallery: tuple[Path | None, int, str] | None = None  # figure, errors shown, member


def _explanations(inputs: ClinicalInputs, options: ClinicalOptions, evaluated, decided,
                  out: Path, log: Log) -> Explained:
    """Grad-CAM and MC dropout read a single softmax output's logits: a model whose one head is
    the task's answer has them; a multi-head model not (yet)."""
    if any(eh.named for eh in evaluated):
        notes = (["MC dropout is not computed for a multi-head ensemble"]
                 if options.mc_dropout_passes else [])
        for note in notes:
            log(f"MC dropout: {note}")
        return Explained([], {}, notes)
    best = max(inputs.members, key=lambda m: m.weight)
    model = _load(best.model_path)
    figures = _gradcam_figures(model, best, inputs, options, out)
    (head,) = evaluated
    decision, confidence = decided[head.head.name]
    figure, shown = failure_gallery(model, inputs.test_images[best.resolution],
                                    np.asarray(inputs.y_test), decision, confidence,
                                    inputs.task.classes, inputs.test_paths, out)
    gallery = (figure, shown, best.name)
    if not options.mc_dropout_passes:
        return Explained(figures, {}, [], gallery=gallery)
    summary = mc_summary(_mc_dropout(inputs, options, log))
    return Explained(figures, {
        "test_mc_dropout_mean_entropy": float(summary["predictive_entropy"].mean()),
        "test_mc_dropout_mean_mutual_information": float(
            summary["mutual_information"].mean())}, [], summary["predictive_entropy"],
        gallery)


def _load(path: str):
    import keras

    from orchestrator.models import classifier  # noqa: F401  (registers BackbonePreprocess)

    return keras.models.load_model(path)


def _gradcam_figures(model, member: Member, inputs: ClinicalInputs, options: ClinicalOptions,
                     out: Path) -> list[Path]:
    """Per class: up to n correctly and n wrongly classified test images, with the best
    member's Grad-CAM for the class it predicted."""
    from orchestrator.clinical.gradcam import gradcam, overlay

    images = inputs.test_images[member.resolution]
    probs = model.predict(images.astype(np.float32), batch_size=64, verbose=0)
    pred = probs.argmax(axis=1)
    paths = []
    for k, name in enumerate(inputs.task.classes):
        picked, captions = [], []
        for correct in (True, False):
            idx = np.flatnonzero((inputs.y_test == k) & ((pred == k) == correct))
            for i in idx[:options.gradcam_per_group]:
                picked.append(i)
                captions.append(f"{'correct' if correct else 'WRONG'}: true {name}\npredicted "
                                f"{inputs.task.classes[pred[i]]} ({probs[i, pred[i]]:.2f})")
        if not picked:
            continue
        maps = gradcam(model, images[picked], pred[picked])
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        paths.append(plots.image_grid(
            [overlay(images[i], m) for i, m in zip(picked, maps)], captions,
            out / f"gradcam_{safe}.png",
            f"Grad-CAM, best member {member.name}: true class {name}",
            columns=max(1, options.gradcam_per_group)))
    return paths


def _mc_dropout(inputs: ClinicalInputs, options: ClinicalOptions, log: Log) -> np.ndarray:
    per_member = {}
    for m in inputs.members:
        log(f"MC dropout: {options.mc_dropout_passes} passes of {m.name} over the test split")
        per_member[m.name] = mc_dropout_probs(_load(m.model_path), inputs.test_images[m.resolution],
                                              options.mc_dropout_passes, seed=options.seed)
    return ensemble_mc(per_member, {m.name: m.weight for m in inputs.members})
