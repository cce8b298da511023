"""What the per-patient view of the test split found (`PerPatient`, measured by
`per_patient.py`) and how report.html and the console say it. Light: no plotting, no models."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd

from orchestrator.clinical import artifacts
from orchestrator.clinical.bootstrap import (figure_text, format_interval, note_lines, row_note,
                                             sound_interval_metrics)
from orchestrator.clinical.html import Section
from orchestrator.clinical.patients import RuleChoice

PREFIX = "patient_"  # its figures: `patient_balanced_accuracy`, MLflow `test_patient_...`
NAMED = 10  # mixed-label groups named in the report; the rest counted


@dataclass(frozen=True)
class PerPatient:
    groups: int
    images: int
    # by classification head ("" for a single-label task's one): the rule used, and the test
    # groups whose images carry different labels
    rules: Mapping[str, str] = field(default_factory=dict)
    mixed: Mapping[str, tuple] = field(default_factory=dict)
    choices: Mapping[str, RuleChoice | None] = field(default_factory=dict)  # what backs a rule
    intervals: pd.DataFrame | None = None  # None: every group one image, nothing to add
    figures: tuple[Path, ...] = ()
    review: pd.DataFrame | None = None

    @property
    def several(self) -> bool:
        return self.intervals is not None

    def write(self, out: Path) -> list[Path]:
        """Its tables beside the per-image ones, and its figures: the files to log."""
        if not self.several:
            return []
        tables = [out / artifacts.TEST_METRICS_PER_PATIENT, out / artifacts.REVIEW_PER_PATIENT]
        self.intervals.to_csv(tables[0], index=False)
        self.review.to_csv(tables[1], index=False)
        return tables + list(self.figures)

    def metrics(self) -> dict[str, float]:
        """`test_patient_<metric>` (with `_ci_low`/`_ci_high` beside a sound interval)."""
        return {} if self.intervals is None else sound_interval_metrics(self.intervals, None, "")


def _named(groups: tuple) -> str:
    more = f" and {len(groups) - NAMED} more" if len(groups) > NAMED else ""
    return ", ".join(map(str, groups[:NAMED])) + more


def _rules_text(pp: PerPatient, held: str) -> str:
    parts = []
    for name, rule in pp.rules.items():
        grouping = pp.choices.get(name)
        why = (grouping.sentence(held) if grouping is not None else
               f"no {held} groups were given, so images are combined by their {rule} "
               "(the default)")
        parts.append(f"{'' if name == '' else f'head {name}: '}{why}")
    return "; ".join(parts)


def _mixed_text(pp: PerPatient) -> str:
    found = {name: groups for name, groups in pp.mixed.items() if groups}
    if not found:
        return "No test group has images with different labels."
    return " ".join(f"{len(groups)} test group(s) have images with different "
                    f"{'labels' if name == '' else f'{name} labels'}: {_named(groups)}."
                    for name, groups in found.items())


def patient_section(pp: PerPatient, held: str, resamples: int) -> Section:
    """report.html's per-patient section; one sentence when every group is one image."""
    if not pp.several:
        return Section("Per patient", [
            f"Every test group (patient, lesion) is a single image ({pp.images} images): the "
            "per-patient figures equal the per-image ones above."])
    shown = pp.intervals.assign(value=[figure_text(r.metric, r.point, r.low, r.high,
                                                   note=row_note(r))
                                       for r in pp.intervals.itertuples()])
    notes = note_lines(pp.intervals)
    return Section("Per patient", [
        f"The clinic decides once per patient. The test split's {pp.images} images form "
        f"{pp.groups} groups (patients, lesions: the data's `group` column). Each group's "
        f"calibrated image probabilities are combined into one: {_rules_text(pp, held)}. "
        "The group is decided on them as an image is (the operating point, else the most "
        "probable class), its confidence is the probability of that decision, and it is "
        "referred below the same refer cut, which was fitted on images.",
        "A group's label is its images' label; where they differ it is positive if any "
        "image is (a binary task's positive class), else the most frequent label (ties to the "
        "class listed first). " + _mixed_text(pp),
        f"Test figures per group with 95% bootstrap intervals: {resamples} resamples of whole "
        "groups, stratified by the group's label (test_metrics_per_patient.csv)."
        + (" " + _sentence("; ".join(notes)) if notes else ""),
        "The groups the ensemble is least sure about, every image of each listed: "
        f"{artifacts.REVIEW_PER_PATIENT}."],
        tables=[shown[["metric", "value"]], pp.review], figures=list(pp.figures))


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def patient_line(pp: PerPatient, metric: str, held: str) -> str:
    """One console line: the task metric per patient, the rule, the mixed groups; "" when
    every group is one image (the per-image figures say it all)."""
    if not pp.several:
        return ""
    row = pp.intervals.set_index("metric").loc[PREFIX + metric]
    rules = ", ".join(f"{name} {rule}" if name else rule for name, rule in pp.rules.items())
    mixed = sum(len(g) for g in pp.mixed.values())
    chosen = (f"chosen on {held} groups" if all(c is not None and c.evidence
                                                for c in pp.choices.values())
              else f"the default: no {held} group of several images to choose on")
    return (f"per patient: {pp.groups} test groups of {pp.images} images, combined by "
            f"{rules} ({chosen}): {metric} "
            f"{format_interval(row.point, row.low, row.high, note=row_note(row))}"
            + (f"; {mixed} group(s) with mixed labels" if mixed else ""))
