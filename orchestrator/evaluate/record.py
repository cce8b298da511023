"""What an external evaluation leaves behind, and says: the evaluation run (params, figures
with their intervals, the transport comparison, recalibration, evaluation.html and the
answers), the result on the model version, and the lines a person reads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from orchestrator.clinical.bootstrap import figure_text, format_interval, note_lines, row_note
from orchestrator.clinical.external_sections import Evaluation
from orchestrator.clinical.transport import Transport

Log = Callable[[str], None]
PREDICTIONS = "external_predictions.csv"
FIGURES = "external_figures.csv"
SPLIT = "recalibration_split.csv"
REPORT = "evaluation.html"


@dataclass(frozen=True)
class ExternalResult:
    """What an external evaluation logged: its run, the figures, the verdict."""

    run_id: str
    model: str  # models:/name/version
    site: str
    intervals: pd.DataFrame
    transport: Transport | None
    headline: str
    ui_command: str
    recalibration_temperature: float | None = None


SHOWN = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "ppv", "npv",
         "calibration_intercept", "calibration_slope", "brier", "refer_coverage",
         "accuracy_accepted", "set_coverage", "set_size_mean", "ood_flagged")


def _flat(intervals: pd.DataFrame, prefix: str) -> dict[str, float]:
    """`<prefix><metric>` always; `_ci_low`/`_ci_high` only beside a sound interval."""
    out = {}
    for row in intervals.itertuples():
        out[f"{prefix}{row.metric}"] = row.point
        if not row_note(row):
            out[f"{prefix}{row.metric}_ci_low"] = row.low
            out[f"{prefix}{row.metric}_ci_high"] = row.high
    return out


def metrics_of(ev: Evaluation) -> dict[str, float]:
    out = _flat(ev.intervals, "external_")
    if ev.transport is not None:
        t = ev.transport
        for name, e in (("internal", t.internal), ("difference", t.difference)):
            out[f"{name}_{t.metric}"] = e.point
            if not e.note:
                out[f"{name}_{t.metric}_ci_low"], out[f"{name}_{t.metric}_ci_high"] = e.low, e.high
    if ev.recalibrated is not None:
        rec = ev.recalibrated
        out["recalibration_temperature"] = rec.temperature
        out.update(_flat(rec.before, "before_recalibration_"))
        out.update(_flat(rec.after, "after_recalibration_"))
    return out


def headline(ev: Evaluation, metric: str) -> str:
    """The version tag's value: the site's figure of the task metric and the verdict."""
    row = ev.intervals.set_index("metric").loc[metric]
    text = f"{metric} {format_interval(row.point, row.low, row.high, note=row_note(row))}"
    if ev.transport is not None:
        text += f"; {ev.transport.verdict}"
    return text


def _shown(metric: str, row) -> str:
    text = figure_text(metric, row.point, row.low, row.high, note=row_note(row),
                       cases="external")
    return "undefined on this data" if text.startswith("nan") else text  # e.g. one class only


def lines(ev: Evaluation) -> list[str]:
    """The figures a person reads first, then why some have no interval, then the verdict."""
    rows = ev.intervals.set_index("metric")
    names = list(SHOWN) + [m for m in rows.index if m.startswith("recall_")]
    shown = [f"  {m} {_shown(m, rows.loc[m])}" for m in names if m in rows.index]
    out = [f"external figures at {ev.site} [95% group-bootstrap CI]:", *shown,
           *note_lines(ev.intervals), *ev.rules]
    out.append(ev.transport.line if ev.transport is not None else
               "no comparison: the version recorded no answers on its own test split")
    if ev.recalibrated is not None:
        rec = ev.recalibrated
        before, after = (rec.before.set_index("metric"), rec.after.set_index("metric"))
        pick = [m for m in ("brier", "calibration_slope", "calibration_intercept", "ece")
                if m in before.index]
        out.append(f"recalibration: T x {rec.temperature:.3f} fitted on {rec.fitted_cases} "
                   f"images ({rec.fitted_groups} groups), judged on the other "
                   f"{rec.judged_cases} ({rec.judged_groups} groups): " + "; ".join(
                       f"{m} {before.loc[m].point:.3f} -> {after.loc[m].point:.3f}"
                       for m in pick))
    return out


def record(uri: str, ref, ev: Evaluation, rows: pd.DataFrame, split: pd.DataFrame | None,
           files: Sequence[Path], task, resamples: int, seed: int,
           recalibrate: float | None, log: Log):
    from orchestrator import tracking
    from orchestrator.keys import NOTE_TAG, TAG_TRANSPORT, version_external_tag
    from orchestrator.tracking import evaluation as tev

    fingerprint = str(ev.facts["data fingerprint"])
    run_id = tev.start_evaluation_run(
        uri, ref, site=ev.site, fingerprint=fingerprint, task=task.key, source=ev.source,
        params={"model": ref.uri, "site": ev.site, "data": ev.source, "task": task.key,
                "resamples": resamples, "seed": seed, "recalibrate": recalibrate})
    try:
        tev.log_linked_metrics(uri, run_id, metrics_of(ev), ref, ev.site, fingerprint)
        if ev.transport is not None:
            tracking.set_tags(uri, run_id, {TAG_TRANSPORT: ev.transport.verdict})
        tracking.log_table_artifact(uri, run_id, rows, PREDICTIONS)
        tracking.log_table_artifact(uri, run_id, ev.intervals, FIGURES)
        if split is not None:
            tracking.log_table_artifact(uri, run_id, split, SPLIT)
        for path in files:
            tracking.log_file(uri, run_id, path)
        top = headline(ev, task.metric)
        summary = (ev.transport.line if ev.transport is not None else top)
        tracking.set_tags(uri, run_id, {NOTE_TAG: (
            f"External evaluation of [{ref.name} version {ref.version}](#/models/{ref.name}/"
            f"versions/{ref.version}) at {ev.site}: {summary}.")})
        tev.record_on_version(uri, ref, ev.site, top,
                              f"{summary} ([evaluation run]({tracking.run_page(uri, run_id)})"
                              f", {ev.facts['images evaluated']} "
                              f"images, data `{fingerprint[:12]}`)")
    except Exception:
        tracking.finish_run(uri, run_id, "FAILED")
        raise
    tracking.finish_run(uri, run_id)
    for line in lines(ev):
        log(line)
    log(f"{ref.name} version {ref.version} tagged {version_external_tag(ev.site)} = "
        f"{top!r}; its description has the line")
    ui = tracking.ui_command(uri, tracking.local_artifact_root(uri))
    log(f"evaluation run {run_id} (evaluation.html in its artifacts); open the MLflow UI: {ui}")
    return ExternalResult(run_id, ref.uri, ev.site, ev.intervals, ev.transport, top, ui,
                          ev.recalibrated.temperature if ev.recalibrated else None)
