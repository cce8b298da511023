"""evaluation.html: an external evaluation in the look of report.html (`clinical.html`), its
figures with their 95% group-bootstrap intervals, the transport line, calibration on the new
data, what the served rules (refer, sets, OOD) did there and, when asked, recalibration."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from orchestrator.clinical.bootstrap import figure_text, note_lines, row_note
from orchestrator.clinical.html import Section, write_report
from orchestrator.clinical.subgroup_sections import subgroup_section
from orchestrator.clinical.subgroups import Subgroups
from orchestrator.clinical.transport import Transport

CALIBRATION_TEXT = (
    "Logistic recalibration of the served probabilities on this data: logit P(y) = a + b "
    "logit(p). Slope b = 1 for calibrated probabilities, < 1 when they are too extreme "
    "(over-confident here), > 1 when too modest; calibration-in-the-large (a with b fixed at 1) "
    "= 0 when the mean risk is right, < 0 when the model over-predicts. {target}")
TRANSPORT_TEXT = (
    "The internal figure is recomputed from the version's recorded answers on its own test "
    "split. The difference's interval resamples both sets independently (each round: the "
    "external groups and the internal test groups, external minus internal), so the internal "
    "uncertainty is carried, not ignored. 'Did not transport' means the whole interval lies on "
    "the worse side of 0; otherwise no drop is shown beyond resampling noise (a wide interval "
    "makes that a weak statement). Fewer than 20 groups on either side: no interval, no "
    "verdict.")


@dataclass(frozen=True)
class Recalibrated:
    """The recalibration block: the new temperature, what it was fitted and judged on, and
    the judged part's figures before and after it."""

    temperature: float
    fitted_groups: int
    fitted_cases: int
    judged_groups: int
    judged_cases: int
    before: pd.DataFrame  # bootstrap_intervals rows
    after: pd.DataFrame
    figure: Path


@dataclass(frozen=True)
class Evaluation:
    model: str  # models:/name/version
    site: str
    source: str
    facts: Mapping[str, object]  # what was read: images, groups, left out, fingerprint
    intervals: pd.DataFrame  # bootstrap_intervals rows of the external figures
    transport: Transport | None  # None: the version recorded no test answers
    calibration_target: str
    rules: Sequence[str]  # the served rules' stated and observed figures, one line each
    reliability: Path
    synthetic: bool
    recalibrated: Recalibrated | None = None
    subgroups: Subgroups | None = None  # the figures per --subgroup value


def figure_table(intervals: pd.DataFrame, column: str = "external [95% CI]") -> pd.DataFrame:
    return pd.DataFrame({"metric": intervals["metric"], column: [
        figure_text(r.metric, r.point, r.low, r.high, note=row_note(r), cases="external")
        for r in intervals.itertuples()]})


def _recalibration(rec: Recalibrated) -> Section:
    table = figure_table(rec.before, "as served").assign(**{
        f"recalibrated (T x {rec.temperature:.3f})": figure_table(rec.after)[
            "external [95% CI]"].to_numpy()})
    return Section("Recalibration on this site", paragraphs=[
        f"A new temperature ({rec.temperature:.3f}, on top of the served one) fitted on "
        f"{rec.fitted_cases} images of {rec.fitted_groups} groups, judged on the other "
        f"{rec.judged_cases} images of {rec.judged_groups} groups: no patient is on both "
        "sides. The registered threshold and refer cut are applied to the recalibrated "
        "probabilities unchanged.", *note_lines(rec.after)],
        tables=[table], figures=[rec.figure])


def sections(ev: Evaluation) -> list[Section]:
    facts = pd.DataFrame({"": list(ev.facts), "value": [str(v) for v in ev.facts.values()]})
    out = [Section("What was evaluated", paragraphs=[
        f"{ev.model} on {ev.source} (site {ev.site}), through the registered pyfunc: the "
        "answers a deployment would give."], tables=[facts])]
    if ev.transport is None:
        out.append(Section("Transport", paragraphs=[
            "The version recorded no answers on its test split: no comparison."]))
    else:
        out.append(Section("Transport", paragraphs=[ev.transport.line, TRANSPORT_TEXT]))
    out.append(Section("Figures with 95% group-bootstrap intervals",
                       paragraphs=note_lines(ev.intervals), tables=[figure_table(ev.intervals)]))
    out.append(Section("Calibration", paragraphs=[
        CALIBRATION_TEXT.format(target=ev.calibration_target)], figures=[ev.reliability]))
    out.append(Section("The served rules on this data", paragraphs=list(ev.rules)))
    if ev.subgroups is not None:
        out.append(subgroup_section(ev.subgroups, "external data",
                                    "read from the site's data with its images"))
    if ev.recalibrated is not None:
        out.append(_recalibration(ev.recalibrated))
    return out


def write(ev: Evaluation, path: Path) -> Path:
    banner = ("SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES: these figures say nothing about "
              "real patients" if ev.synthetic else None)
    return write_report(path, f"External evaluation of {ev.model} at {ev.site}", sections(ev),
                        banner)
