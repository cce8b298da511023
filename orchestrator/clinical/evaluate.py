"""The clinical evaluation of a final ensemble: fit on validation (threshold, temperature),
measure on test with bootstrap intervals, draw, explain, list the cases to review, write
report.html. Called by `orchestrator.ensemble.build` after every choice is fixed; returns the
files to log and the figures to record. A multi-head task's ensemble is evaluated head by head
in `multihead.py`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical import artifacts
from orchestrator.clinical import plots
from orchestrator.clinical.bootstrap import (DEFAULT_RESAMPLES, count_units, intervals_by_model,
                                             no_interval_lines, paired_difference,
                                             resample_indices, sound_interval_metrics)
from orchestrator.clinical.calibration import (apply_temperature, brier_score,
                                               expected_calibration_error, fit_temperature, nll)
from orchestrator.clinical.html import write_report
from orchestrator.clinical.multihead import evaluate_multihead
from orchestrator.clinical.sections import BEST_SINGLE, ENSEMBLE, sections
from orchestrator.clinical.operating_point import (RULES, binary_figures, choose_threshold,
                                                   threshold_table)
from orchestrator.clinical.referral import (DEFAULT_TARGET_ACCURACY, choose_refer_cut, decide,
                                            referral_figures)
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.result import ClinicalResult
from orchestrator.clinical.uncertainty import (ensemble_mc, mc_dropout_probs, mc_summary,
                                               review_table)
from orchestrator.console import detail
from orchestrator.errors import ConfigError
from tasks.base import Task

Log = Callable[[str], None]


@dataclass(frozen=True)
class ClinicalOptions:
    threshold_rule: str = "sensitivity_bound"  # or "sensitivity", "youden" (operating_point)
    target_sensitivity: float = 0.90
    target_accuracy: float = DEFAULT_TARGET_ACCURACY  # of the cases the model does not refer
    resamples: int = DEFAULT_RESAMPLES
    mc_dropout_passes: int = 0  # 0: off
    gradcam_per_group: int = 3  # images per class, correct and wrong each
    review_cases: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threshold_rule not in RULES:
            raise ConfigError(f"threshold rule {self.threshold_rule!r}: valid {', '.join(RULES)}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ConfigError(f"target sensitivity must be in (0, 1], got "
                              f"{self.target_sensitivity}")
        if not 0.0 < self.target_accuracy <= 1.0:
            raise ConfigError(f"target accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.resamples < 1000:
            raise ConfigError(f"bootstrap resamples must be >= 1000, got {self.resamples}")
        if self.mc_dropout_passes < 0:
            raise ConfigError(f"MC-dropout passes must be >= 0, got {self.mc_dropout_passes}")


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


def evaluate(inputs: ClinicalInputs, options: ClinicalOptions, out: Path,
             log: Log = print) -> ClinicalResult:
    if inputs.task.is_multihead:
        return evaluate_multihead(inputs, options, out, log)
    task, y_val, y_test = inputs.task, inputs.y_val, inputs.y_test
    ens_val, ens_test = inputs.val_probs[ENSEMBLE], inputs.test_probs[ENSEMBLE]
    pos = task.binary_positive if task.is_binary else None
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    # --- fitted on validation only -------------------------------------------------------------
    # The temperature first: the threshold and the refer cut then apply to the calibrated
    # probabilities the served model returns (a binary temperature is monotone, so the
    # operating point is the same one either way).
    temperature = fit_temperature(y_val, ens_val)
    val_calibrated = apply_temperature(ens_val, temperature)
    calibrated = apply_temperature(ens_test, temperature)
    detail(log, f"temperature fitted on {inputs.held_out} predictions: T = {temperature:.3f}")
    op = None
    if task.is_binary:
        op = choose_threshold(y_val == pos, val_calibrated[:, pos], rule=options.threshold_rule,
                              target_sensitivity=options.target_sensitivity)
        log(f"operating point chosen on {inputs.held_out} predictions: threshold "
            f"{op.threshold:.4f} on the calibrated probability ({op.rule}; "
            f"val sensitivity {op.val_sensitivity:.3f}, specificity {op.val_specificity:.3f})")
        table = threshold_table(y_val == pos, val_calibrated[:, pos], y_test == pos,
                                calibrated[:, pos], chosen=op.threshold)
        files.append(out / artifacts.THRESHOLD_TABLE)
        table.to_csv(files[-1], index=False)
    threshold = op.threshold if op is not None else None
    val_decision, val_confidence = decide(val_calibrated, threshold, pos)
    referral = choose_refer_cut(y_val, val_decision, val_confidence, options.target_accuracy)
    test_decision, test_confidence = decide(calibrated, threshold, pos)
    detail(log, f"refer cut chosen on {inputs.held_out} predictions: confidence < "
           f"{referral.cut:.4f} is referred ({referral.coverage:.1%} of held-out cases accepted "
           f"at accuracy {referral.accuracy:.3f}; target {referral.target_accuracy})"
           if not referral.refers_everything else
           f"refer cut: no confidence reaches accuracy {referral.target_accuracy} on "
           f"{inputs.held_out} predictions, so every case is referred")

    # --- measured on test, with intervals ----------------------------------------------------------
    resamples = resample_indices(y_test, inputs.test_groups, options.resamples, options.seed)
    units = count_units(y_test, inputs.test_groups)

    def ensemble_metrics(idx: np.ndarray) -> dict[str, float]:
        y, p, c = y_test[idx], ens_test[idx], calibrated[idx]
        out_ = fast_metrics(y, p, task.positive_index)
        if op is not None:
            out_.update({f"{k}_at_threshold": v for k, v in
                         binary_figures(y == pos, c[:, pos], op.threshold).items()})
        out_.update({f"{k}_at_refer_cut": v for k, v in referral_figures(
            y, test_decision[idx], test_confidence[idx], referral.cut).items()})
        out_.update({"brier": brier_score(y, p), "ece": expected_calibration_error(y, p),
                     "nll": nll(y, p), "brier_calibrated": brier_score(y, c),
                     "ece_calibrated": expected_calibration_error(y, c),
                     "nll_calibrated": nll(y, c)})
        return out_

    intervals = intervals_by_model(
        inputs.test_probs, ENSEMBLE, ensemble_metrics,
        lambda idx, p: fast_metrics(y_test[idx], p[idx], task.positive_index), resamples,
        units)
    difference = None
    if BEST_SINGLE in inputs.test_probs:
        difference = paired_difference(
            lambda y, p: fast_metrics(y, p, task.positive_index)[task.metric], y_test,
            ens_test, inputs.test_probs[BEST_SINGLE], resamples, units=units)
    files.append(out / artifacts.TEST_METRICS)
    intervals.to_csv(files[-1], index=False)
    groups_note = ("whole groups (patient / lesion) resampled" if len(np.unique(
        inputs.test_groups)) < len(y_test) else "each image its own group")
    detail(log, f"bootstrap: {options.resamples} stratified resamples of the test split, "
                f"{groups_note}")
    interval_notes = no_interval_lines(intervals, difference, task.metric)
    for line in interval_notes:
        log(line)

    # --- figures ------------------------------------------------------------------------------
    classes = list(task.classes)
    figures = [
        plots.confusion_matrices(y_test, test_decision, classes, out / artifacts.CONFUSION_MATRIX,
                                 "test" + (" at the operating point" if op else "")),
        # binary: on the calibrated scale, where the threshold lives (same curve, monotone)
        plots.roc_pr_curves(y_test, calibrated if op else ens_test, classes,
                            out / artifacts.ROC_PR_CURVES,
                            positive_index=task.positive_index,
                            threshold=op.threshold if op else None, title="test"),
        plots.reliability_diagram(y_test, ens_test, calibrated, out / artifacts.RELIABILITY_DIAGRAM,
                                  temperature=temperature, title="test"),
    ]
    metric = next(c for c in inputs.leaderboard.columns if c.startswith("best_"))
    figures.append(plots.trial_comparison(inputs.leaderboard, metric,
                                          out / artifacts.TRIAL_COMPARISON,
                                          [m.name for m in inputs.members]))
    best = max(inputs.members, key=lambda m: m.weight)
    figures += _gradcam_figures(best, inputs, options, out)

    # --- uncertainty and cases to review -----------------------------------------------------
    mc_entropy = None
    metrics: dict[str, float] = {}
    if options.mc_dropout_passes:
        samples = _mc_dropout(inputs, options, log)
        summary = mc_summary(samples)
        mc_entropy = summary["predictive_entropy"]
        metrics["test_mc_dropout_mean_entropy"] = float(mc_entropy.mean())
        metrics["test_mc_dropout_mean_mutual_information"] = float(
            summary["mutual_information"].mean())
    review = review_table(inputs.test_paths, y_test, calibrated, classes,
                          options.review_cases, mc_entropy)
    files.append(out / artifacts.REVIEW)
    review.to_csv(files[-1], index=False)
    files += figures

    metrics.update(sound_interval_metrics(intervals[intervals.model == ENSEMBLE], difference,
                                          task.metric))
    metrics["temperature"] = temperature
    if op is not None:
        metrics.update({"threshold": op.threshold, "val_sensitivity_at_threshold":
                        op.val_sensitivity, "val_specificity_at_threshold": op.val_specificity})
    metrics.update({"refer_cut": referral.cut, "val_coverage_at_refer_cut": referral.coverage,
                    "val_accuracy_accepted_at_refer_cut": referral.accuracy})

    report_sections = sections(inputs, options, op, temperature, intervals, figures, review,
                         groups_note, metric, referral, difference)
    banner = ("SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES. These figures say nothing about "
              "real patients.") if inputs.synthetic else None
    files.append(write_report(out / artifacts.REPORT, inputs.title, report_sections, banner))
    return ClinicalResult(files, metrics, intervals, temperature, op, referral, calibrated,
                          interval_notes=interval_notes)


def _load(path: str):
    import keras

    from orchestrator.models import classifier  # noqa: F401  (registers BackbonePreprocess)

    return keras.models.load_model(path)


def _gradcam_figures(member: Member, inputs: ClinicalInputs, options: ClinicalOptions,
                     out: Path) -> list[Path]:
    """Per class: up to n correctly and n wrongly classified test images, with the best
    member's Grad-CAM for the class it predicted."""
    from orchestrator.clinical.gradcam import gradcam, overlay

    model = _load(member.model_path)
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
