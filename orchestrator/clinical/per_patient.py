"""The test split per patient: the clinic decides once per patient (or lesion), the per-image
figures count each view. Each classification head's calibrated image probabilities combine per
group by the rule its fit chose on held-out groups (`patients.choose_rule`); the group is then
decided, referred and measured as an image is, with bootstrap intervals over whole groups; a
regression head's value and truth are the group's means. Nothing here is fitted on test; what
it found is worded in `patient_sections.py`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from orchestrator.clinical import artifacts, plots
from orchestrator.clinical.bootstrap import bootstrap_intervals, resample_indices
from orchestrator.clinical.heads import KINDS, review_table
from orchestrator.clinical.operating_point import binary_figures
from orchestrator.clinical.patient_sections import PREFIX, PerPatient
from orchestrator.clinical.patients import (DEFAULT_RULE, Groups, combine, group_index,
                                            group_labels, mean_values)
from orchestrator.clinical.referral import referral_figures
from orchestrator.clinical.resampled_metrics import task_metrics


def per_patient(inputs, options, evaluated, fits, calibrated: np.ndarray, out: Path
                ) -> PerPatient:
    """The test figures per group, the confusion matrix per group, the groups to review."""
    found = group_index(inputs.test_groups)
    if not found.several:
        return PerPatient(len(found.names), len(found.index))
    y, cal = np.asarray(inputs.y_test), np.asarray(calibrated, dtype=np.float64)
    y_g = np.zeros((len(found.names),) + y.shape[1:], dtype=np.float64)
    cal_g = mean_values(cal, found)  # every column; each classification block replaced below
    rules, mixed, labels, choices = {}, {}, {}, {}
    for eh in evaluated:
        at = slice(None) if eh.target is None else (slice(None), eh.target)
        if not eh.head.is_classification:
            y_g[at] = mean_values(eh.targets(y), found)
            continue
        fit, shown = fits[eh.head.name], eh.head.name if eh.named else ""
        rules[shown] = fit.grouping.rule if fit.grouping else DEFAULT_RULE
        choices[shown] = fit.grouping
        cal_g[:, eh.columns] = combine(cal[:, eh.columns], found, rules[shown])
        labelled = group_labels(eh.targets(y), found, eh.positive)
        y_g[at], mixed[shown], labels[eh.head.name] = (labelled.labels, labelled.mixed,
                                                       labelled.labels)
    y_g = y_g.astype(np.int64) if y.ndim == 1 else y_g
    decided = {eh.head.name: KINDS[eh.head.kind].decide(eh, fits[eh.head.name],
                                                        cal_g[:, eh.columns])
               for eh in evaluated}

    def figures_of(idx: np.ndarray) -> dict[str, float]:
        measured = task_metrics(y_g[idx], cal_g[idx], inputs.task)
        for eh in (e for e in evaluated if e.head.is_classification):
            fit, (decision, confidence) = fits[eh.head.name], decided[eh.head.name]
            truth = labels[eh.head.name][idx]
            if fit.operating_point is not None:
                measured.update({f"{k}_at_threshold": v for k, v in binary_figures(
                    truth == eh.positive, cal_g[idx, eh.columns][:, eh.positive],
                    fit.operating_point.threshold).items()})
            measured.update({f"{eh.prefix}{k}_at_refer_cut": v for k, v in referral_figures(
                truth, decision[idx], confidence[idx], fit.referral.cut).items()})
        return {PREFIX + k: v for k, v in measured.items()}

    first = next(eh for eh in evaluated if eh.head.is_classification)
    resamples = resample_indices(labels[first.head.name], None, options.resamples, options.seed)
    intervals = bootstrap_intervals(figures_of, len(found.names), resamples,
                                    units=len(found.names))
    intervals.insert(0, "model", "ensemble")
    figures = tuple(plots.confusion_matrices(
        labels[eh.head.name], decided[eh.head.name][0], list(eh.head.classes),
        out / eh.file(artifacts.CONFUSION_MATRIX_PER_PATIENT),
        eh.title(f"test, per patient ({len(found.names)} groups)"))
        for eh in evaluated if eh.head.is_classification)
    review = review_table([str(n) for n in found.names], evaluated, y_g, cal_g,
                          options.review_cases).rename(columns={"path": "group"})
    review.insert(1, "n_images", review["group"].map(dict(zip(map(str, found.names),
                                                                found.sizes.tolist()))))
    review.insert(2, "images", review["group"].map(_images_of(found, inputs.test_paths)))
    return PerPatient(len(found.names), len(found.index), rules, mixed, choices, intervals,
                      figures, review)


def _images_of(found: Groups, paths: Sequence[str]) -> dict[str, str]:
    """Each group's image paths, `; `-joined, for a person to open."""
    return {str(name): "; ".join(str(paths[i]) for i in found.members(g))
            for g, name in enumerate(found.names)}
