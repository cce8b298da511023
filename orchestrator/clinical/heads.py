"""The clinical evaluation, head by head: what is fitted on held-out predictions, measured on
test and drawn for one head depends on its kind alone (`KINDS`: classification, regression).

A single-label task is one classification head (`Task.output_heads`) whose answer is the task's
own: its figures, files and metrics carry no head name, and it alone may have a binary
operating point and ROC/PR curves (a multi-head model serves no threshold per head yet). Every
other head's carry its name (`shape_balanced_accuracy`, `confusion_matrix_shape.png`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical import artifacts, plots
from orchestrator.clinical.evaluated import EvaluatedHead
from orchestrator.clinical.calibration import (apply_temperature, brier_score,
                                               expected_calibration_error, fit_temperature, nll)
from orchestrator.clinical.conformal import (fit_sets, in_set, min_cases, safe_name,
                                             set_figures)
from orchestrator.clinical.operating_point import binary_figures, choose_threshold
from orchestrator.clinical.patients import choose_rule
from orchestrator.clinical.referral import choose_refer_cut, decide, referral_figures
from orchestrator.clinical.result import HeadFit
from orchestrator.clinical.uncertainty import entropy
from orchestrator.console import detail

Log = Callable[[str], None]


class Classification:
    """A temperature, then (binary single-label) a threshold, then a refer cut on the calibrated
    confidence of the decision; each on this head's held-out predictions only."""

    def fit(self, eh: EvaluatedHead, y: np.ndarray, block: np.ndarray, options, held: str,
            log: Log, groups: np.ndarray | None = None) -> HeadFit:
        temperature = fit_temperature(y, block)
        calibrated = apply_temperature(block, temperature)
        where = f"head {eh.head.name}: " if eh.named else ""
        detail(log, f"{where}temperature fitted on {held} predictions: T = {temperature:.3f}")
        op = None
        if eh.positive is not None:
            op = choose_threshold(y == eh.positive, calibrated[:, eh.positive],
                                  rule=options.threshold_rule,
                                  target_sensitivity=options.target_sensitivity)
            log(f"operating point chosen on {held} predictions: threshold {op.threshold:.4f} "
                f"on the calibrated probability ({op.rule}; val sensitivity "
                f"{op.val_sensitivity:.3f}, specificity {op.val_specificity:.3f})")
        decision, confidence = decide(calibrated, op.threshold if op else None, eh.positive)
        referral = choose_refer_cut(y, decision, confidence, options.target_accuracy,
                                    options.refer_confidence)
        detail(log, f"{where}refer rule chosen on {held} predictions: " + (
            referral.unreachable(held) if referral.refers_everything
            else referral.supported(held)))
        grouping = None
        if groups is not None:  # per patient: mean or max, on the held-out groups' own labels
            grouping = choose_rule(y, calibrated, groups, eh.positive)
            detail(log, f"{where}{grouping.sentence(held)}")
        return HeadFit(eh.head.name, temperature, referral, op,
                       sets=self.fit_sets(eh, y, calibrated, options, held, log),
                       grouping=grouping)

    def fit_sets(self, eh: EvaluatedHead, y, calibrated, options, held: str, log: Log):
        """The prediction-set quantile(s) on the same calibrated held-out predictions; an
        infinite one (too few cases for the coverage) is said, not hidden."""
        sets = fit_sets(calibrated, y, options.set_coverage, options.set_conditional)
        where = f"head {eh.head.name}: " if eh.named else ""
        rule = "one per class" if sets.conditional else "marginal"
        detail(log, f"{where}prediction sets fitted on {held} predictions: {sets.coverage:.0%} "
                    f"nominal coverage, quantile ({rule}) "
                    + ", ".join(f"{q:.4f}" for q in sets.quantiles))
        for i in sets.every_class:
            whom = (f"class {eh.head.classes[i]} has {sets.cases[i]}" if sets.conditional
                    else f"there are {sets.cases[i]}")
            log(f"warning: {where}prediction sets: {whom} {held} case(s), fewer than the "
                f"{min_cases(sets.coverage)} a {sets.coverage:.0%} quantile needs; it is "
                "infinite, so " + (f"{eh.head.classes[i]} is in every set" if sets.conditional
                                   else "every set holds every class"))
        return sets

    def calibrate(self, fit: HeadFit, block: np.ndarray) -> np.ndarray:
        return apply_temperature(block, fit.temperature)

    def decide(self, eh: EvaluatedHead, fit: HeadFit, calibrated: np.ndarray):
        op = fit.operating_point
        return decide(calibrated, op.threshold if op else None, eh.positive)

    def ensemble_metrics(self, eh: EvaluatedHead, fit: HeadFit, y, raw, calibrated,
                         decided) -> dict[str, float]:
        """The ensemble's own test figures beyond the task metrics, on the rows given."""
        p, out = eh.prefix, {}
        op = fit.operating_point
        if op is not None:
            out.update({f"{k}_at_threshold": v for k, v in binary_figures(
                y == eh.positive, calibrated[:, eh.positive], op.threshold).items()})
        out.update({f"{p}{k}_at_refer_cut": v for k, v in referral_figures(
            y, decided[0], decided[1], fit.referral.cut).items()})
        out.update({f"{p}brier": brier_score(y, raw), f"{p}ece": expected_calibration_error(
            y, raw), f"{p}nll": nll(y, raw), f"{p}brier_calibrated": brier_score(y, calibrated),
            f"{p}ece_calibrated": expected_calibration_error(y, calibrated),
            f"{p}nll_calibrated": nll(y, calibrated)})
        if fit.sets is not None:
            out.update(set_figures(y, in_set(calibrated, fit.sets), eh.head.classes, p))
        return out

    def fitted_metrics(self, eh: EvaluatedHead, fit: HeadFit) -> dict[str, float]:
        """What was fitted, as flat MLflow metrics."""
        p, op, referral = eh.prefix, fit.operating_point, fit.referral
        out = {f"{p}temperature": fit.temperature}
        if op is not None:
            out.update({"threshold": op.threshold,
                        "val_sensitivity_at_threshold": op.val_sensitivity,
                        "val_specificity_at_threshold": op.val_specificity})
        out.update({f"{p}refer_cut": referral.cut,
                    f"{p}val_coverage_at_refer_cut": referral.coverage,
                    f"{p}val_accuracy_accepted_at_refer_cut": referral.accuracy,
                    f"{p}val_accuracy_lower_bound_at_refer_cut": referral.lower_bound})
        if fit.sets is not None:
            out[f"{p}set_coverage_nominal"] = fit.sets.coverage
            out.update({f"{p}set_quantile" + (f"_{safe_name(c)}" if fit.sets.conditional
                                              else ""): q
                        for c, q in zip(eh.head.classes, fit.sets.quantiles)})
        return out

    def figures(self, eh: EvaluatedHead, fit: HeadFit, y, raw, calibrated, decided,
                out: Path) -> list[Path]:
        classes, op = list(eh.head.classes), fit.operating_point
        figures = [plots.confusion_matrices(
            y, decided[0], classes, out / eh.file(artifacts.CONFUSION_MATRIX),
            eh.title("test") + (" at the operating point" if op else ""))]
        if eh.curves:  # binary: on the calibrated scale, where the threshold lives
            figures.append(plots.roc_pr_curves(
                y, calibrated if op else raw, classes, out / eh.file(artifacts.ROC_PR_CURVES),
                positive_index=eh.positive if op else None,
                threshold=op.threshold if op else None, title=eh.title("test")))
        figures.append(plots.reliability_diagram(
            y, raw, calibrated, out / eh.file(artifacts.RELIABILITY_DIAGRAM),
            temperature=fit.temperature, title=eh.title("test")))
        return figures

    def review_columns(self, eh: EvaluatedHead, y, calibrated) -> dict[str, object]:
        pred, p, classes = calibrated.argmax(axis=1), eh.prefix, eh.head.classes
        return {f"{p}true": [classes[k] for k in y], f"{p}predicted": [classes[k] for k in pred],
                f"{p}correct": pred == y, f"{p}confidence": calibrated.max(axis=1),
                f"{p}entropy": entropy(calibrated)}


class Regression:
    """Nothing is fitted: the value is measured (MAE, RMSE, R² in the head's unit)."""

    def fit(self, eh, y, block, options, held, log, groups=None) -> HeadFit:
        return HeadFit(eh.head.name, None, None)

    def calibrate(self, fit: HeadFit, block: np.ndarray) -> np.ndarray:
        return block

    def decide(self, eh, fit, calibrated):
        return None

    def ensemble_metrics(self, eh, fit, y, raw, calibrated, decided) -> dict[str, float]:
        return {}

    def fitted_metrics(self, eh, fit) -> dict[str, float]:
        return {}

    def figures(self, eh, fit, y, raw, calibrated, decided, out: Path) -> list[Path]:
        return [plots.regression_scatter(y, raw[:, 0], out / eh.file(artifacts.SCATTER),
                                         unit=eh.head.unit, title=eh.title("test"))]

    def review_columns(self, eh, y, calibrated) -> dict[str, object]:
        p = eh.prefix
        return {f"{p}true": y, f"{p}predicted": calibrated[:, 0],
                f"{p}abs_error": np.abs(calibrated[:, 0] - y)}


KINDS = {"classification": Classification(), "regression": Regression()}


def review_table(paths: Sequence[str], evaluated: Sequence[EvaluatedHead], y: np.ndarray,
                 calibrated: np.ndarray, n: int = 20,
                 mc_entropy: np.ndarray | None = None) -> pd.DataFrame:
    """The `n` test cases whose least sure classification head is least sure (its calibrated
    confidence, lowest first; MC-dropout predictive entropy, when given, breaks ties), with
    every head's truth and answer beside it, for a person to look at."""
    columns: dict[str, object] = {"path": list(paths)}
    for eh in evaluated:
        columns.update(KINDS[eh.head.kind].review_columns(eh, eh.targets(y),
                                                          np.asarray(calibrated)[:, eh.columns]))
    frame = pd.DataFrame(columns)
    confidences = [f"{eh.prefix}confidence" for eh in evaluated if eh.head.is_classification]
    frame.insert(1, "lowest_confidence", frame[confidences].min(axis=1))
    order = ["lowest_confidence"]
    if mc_entropy is not None:
        frame["mc_dropout_entropy"] = mc_entropy
        order.append("mc_dropout_entropy")
    frame = frame.sort_values(order, ascending=[True] + [False] * (len(order) - 1),
                              kind="mergesort")
    if not any(eh.named for eh in evaluated):  # its one head's `confidence` says it already
        frame = frame.drop(columns="lowest_confidence")
    return frame.head(n).reset_index(drop=True)
