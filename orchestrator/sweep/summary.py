"""The parent run as the sweep's summary: its best validation score, the ensemble's test score
with its interval, how many trials ran, stopped early and failed; tags that name the best
trial's run, the ensemble run and the model version; and a description (Markdown, shown on the
run's page) that links to them."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from orchestrator import tracking
from orchestrator.clinical.bootstrap import NO_INTERVAL, row_note
from orchestrator.naming import STOPPED_EARLY, short_trial_name

from orchestrator.keys import (NOTE_TAG, TAG_BEST_TRIAL_RUN,  # noqa: E402
                                        TAG_ENSEMBLE_RUN, TAG_MODEL_VERSION)


def summary_metrics(board: pd.DataFrame, metric: str, ensemble=None,
                    task_metric: str | None = None) -> dict[str, float]:
    """Pure: the figures the parent run shows in the runs table."""
    best = board[f"best_{metric}"].dropna() if f"best_{metric}" in board else pd.Series([])
    status = board["status"] if "status" in board else pd.Series([], dtype=str)
    out: dict[str, float] = {
        "trials_run": float(len(board)),
        "trials_stopped_early": float((status == STOPPED_EARLY).sum()),
        "trials_failed": float((status == "errored").sum()),
    }
    if len(best):
        out[f"best_{metric}"] = float(best.iloc[0])
    if ensemble is not None and ensemble.intervals is not None and task_metric:
        row = ensemble.intervals[(ensemble.intervals.model == "ensemble")
                                 & (ensemble.intervals.metric == task_metric)]
        if len(row):
            out[f"ensemble_test_{task_metric}"] = float(row.point.iloc[0])
            out[f"ensemble_test_{task_metric}_ci_low"] = float(row.low.iloc[0])
            out[f"ensemble_test_{task_metric}_ci_high"] = float(row.high.iloc[0])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def _note(ensemble, task_metric: str) -> str:
    """Why the ensemble's task metric has no interval ("" if it has one)."""
    frame = ensemble.intervals
    found = frame[(frame.model == "ensemble") & (frame.metric == task_metric)]
    return row_note(found.iloc[0]) if len(found) else ""


_run_link = tracking.run_route


def summary_note(experiment_id: str, best: tuple[str, str] | None, ensemble=None,
                 metrics: Mapping[str, float] | None = None, task_metric: str | None = None,
                 metric: str = "", trials_link: str = "") -> str:
    """Pure: the parent run's description, with links the MLflow UI opens; figures rounded to
    3 decimals (the run's metrics keep full precision)."""
    metrics = metrics or {}
    lines = [f"**Sweep summary**: {int(metrics.get('trials_run', 0))} trial(s), "
             f"{int(metrics.get('trials_stopped_early', 0))} stopped early (ASHA), "
             f"{int(metrics.get('trials_failed', 0))} failed.", ""]
    # short enough that the run page shows it whole, without "Show more"
    label = f"all trials by best_{metric}"
    ranked = f"[{label}]({trials_link})" if trials_link else ""
    if best is not None:
        trial_id, run_id = best
        figure = metrics.get(f"best_{metric}")
        lines.append(f"- Best trial: [{short_trial_name(trial_id)}]"
                     f"({_run_link(experiment_id, run_id)})"
                     + (f": best {metric} {figure:.3f}" if figure is not None else "")
                     + (f"; {ranked}" if ranked else ""))
    elif ranked:
        lines.append(f"- [{label[0].upper()}{label[1:]}]({trials_link})")
    if ensemble is not None:
        key = f"ensemble_test_{task_metric}"
        figure = ""
        if key in metrics and key + "_ci_low" in metrics:
            figure = (f": test {task_metric} {metrics[key]:.3f} [{metrics[key + '_ci_low']:.3f}"
                      f", {metrics[key + '_ci_high']:.3f}]")
        elif key in metrics:  # the ensemble run's medsweep.interval_note says why
            figure = f": test {task_metric} {metrics[key]:.3f} {NO_INTERVAL} " \
                     f"({_note(ensemble, task_metric)})"
        lines.append(f"- Final ensemble: [ensemble run]({_run_link(experiment_id, ensemble.run_id)})"
                     + figure)
        if ensemble.registered_name:
            lines.append(f"- Registered model: [{ensemble.registered_name} version "
                         f"{ensemble.registered_version}](#/models/{ensemble.registered_name}/"
                         f"versions/{ensemble.registered_version}) (alias `candidate`; its "
                         "description is the model card)")
    return "\n".join(lines) + "\n"


def record_summary(uri: str, experiment_id: str, parent_run_id: str, board: pd.DataFrame,
                   metric: str, task_metric: str, ensemble=None,
                   trials_link: str = "") -> dict[str, Any]:
    """Log the summary on the parent run; returns the metrics logged."""
    metrics = summary_metrics(board, metric, ensemble, task_metric)
    tracking.log_metrics(uri, parent_run_id, metrics)
    tags: dict[str, str] = {}
    best = None
    if len(board) and "trial_id" in board:
        trial_id = str(board.iloc[0]["trial_id"])
        runs = tracking.find_runs_by_tag(uri, experiment_id, {
            tracking.PARENT_TAG: parent_run_id, tracking.TAG_TRIAL_ID: trial_id})
        if runs:
            best = (trial_id, runs[0].info.run_id)
            tags[TAG_BEST_TRIAL_RUN] = runs[0].info.run_id
    if ensemble is not None:
        tags[TAG_ENSEMBLE_RUN] = ensemble.run_id
        if ensemble.registered_name:
            tags[TAG_MODEL_VERSION] = f"{ensemble.registered_name}/{ensemble.registered_version}"
    tags[NOTE_TAG] = summary_note(experiment_id, best, ensemble, metrics, task_metric, metric,
                                  trials_link)
    tracking.set_tags(uri, parent_run_id, tags)
    return metrics
