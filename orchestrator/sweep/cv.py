"""The sweep's second stage: cross-validation of the finalists.

After the search (holdout split, ASHA), the best `cv_top` configurations are retrained on the
`cv_folds` grouped, stratified folds of every non-test image: N x K Tune trials in parallel,
resumable like the search, each an MLflow child run tagged with its configuration and fold. Each
fold model predicts the fold it never saw, so every non-test image gets exactly one out-of-fold
prediction per configuration: what the ensemble then chooses on (`ensemble/build.py`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from orchestrator import tracking
from orchestrator.train.config import TrialConfig
from orchestrator.errors import SweepInterrupted
from orchestrator.cluster import Log
from orchestrator.naming import short_trial_name
from orchestrator.sweep.shared_data import SharedData
from orchestrator.sweep.trainable import SweepContext, run_cv_trial
from orchestrator.sweep.tuner import make_tuner, unfinished_trials
from orchestrator.train.trial import load_folded_data

CV_SUFFIX = "-cv"  # the stage's Tune experiment: beside the search's, its name plus this


def finalists(grid: tune.ResultGrid, metric: str, mode: str,
              top: int) -> list[tuple[str, dict]]:
    """(search trial id, config) of the `top` trials with the best validation metric, ties
    broken by the lower validation loss; errored trials and NaN metrics never qualify."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        if result.error is not None or frame is None or metric not in frame:
            continue
        values = frame[metric].dropna()
        if values.empty:
            continue
        at = values.idxmax() if mode == "max" else values.idxmin()
        best = float(values[at])
        loss = float(frame.loc[at, "val_loss"]) if "val_loss" in frame else 0.0
        rows.append((-best if mode == "max" else best, loss, result.metrics["trial_id"],
                     dict(result.config)))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(trial_id, config) for _, _, trial_id, config in rows[:top]]


def search_seconds(grid: tune.ResultGrid, chosen: list[tuple[str, dict]]) -> list[float]:
    """Each finalist's fold-trial length as its search trial foretells it: that trial's seconds
    per epoch times the epochs a fold trial runs (a search trial ASHA stopped ran fewer)."""
    by_id = {r.metrics.get("trial_id"): r.metrics for r in grid}
    seconds = []
    for trial_id, config in chosen:
        metrics = by_id.get(trial_id) or {}
        epochs = max(1, int(metrics.get("epoch") or 1))
        seconds.append(float(metrics.get("time_total_s") or 0.0) / epochs
                       * int(config.get("epochs") or epochs))
    return seconds


def longest_first(seconds: Sequence[float]) -> list[int]:
    """The finalists' indices, longest fold trials first (ties: the better finalist first):
    Tune starts the fold trials in this order, so the short ones fill the slots that free up
    and the slots finish together (longest processing time first)."""
    return sorted(range(len(seconds)), key=lambda i: -seconds[i])


def fold_space(order: list[int], folds: int, replicates: int = 1) -> dict:
    """The stage's grid: finalist x fold (x replicate). Tune varies the keys in their sorted
    order, the first fastest: it queues every fold of one finalist, finalist by finalist in
    `order`, and (replicates) that whole round once per seed (tests/test_sweep_cv.py)."""
    space = {"finalist": tune.grid_search(order),
             "cv_fold": tune.grid_search(list(range(folds)))}
    if replicates > 1:
        space["replicate"] = tune.grid_search(list(range(replicates)))
    return space


def cross_validate(chosen: list[tuple[str, dict]], *, folds: int, context: SweepContext,
                   manifest: Path, storage: str, name: str, resources: Any,
                   restore: str | None, log: Log, reuse_actors: bool = True,
                   replicates: int = 1, seconds: Sequence[float] = ()) -> pd.DataFrame:
    """Run (or, with `restore`, continue) the N x R x K fold trials (R seeds per finalist);
    their runs' statuses as a table. `seconds`: each finalist's expected fold-trial length
    (`search_seconds`), which orders the queue longest first; none, the finalists' order.

    Raises SweepInterrupted when Ctrl+C stopped it: `--resume` continues here."""
    cv_context = dataclasses.replace(context, finalists=tuple(chosen))
    resolutions = sorted({int(config["resolution"]) for _, config in chosen})
    base = TrialConfig.from_dict(chosen[0][1])
    folded = {r: load_folded_data(base.replace(resolution=r), manifest, log) for r in resolutions}
    trainable = tune.with_resources(
        tune.with_parameters(run_cv_trial, folded=SharedData.put(folded), context=cv_context),
        resources)
    seeds = f" x {replicates} seeds" if replicates > 1 else ""
    log(f"cross-validation: {len(chosen)} finalist(s){seeds} x {folds} folds = "
        f"{len(chosen) * replicates * folds} trials: "
        + ", ".join(short_trial_name(t) for t, _ in chosen))
    order = longest_first(seconds) if len(seconds) == len(chosen) else range(len(chosen))
    space = fold_space(list(order), folds, replicates)
    tuner = make_tuner(trainable, context=cv_context, name=name + CV_SUFFIX, storage=storage,
                       space=space, num_samples=1, scheduler=FIFOScheduler(), log=log,
                       columns=list(space), keep_checkpoints=1, score_checkpoints=False,
                       reuse_actors=reuse_actors, restore=restore)
    grid = tuner.fit()
    unfinished = unfinished_trials(grid, context, kind=tracking.KIND_CV_TRIAL)
    if unfinished:
        raise SweepInterrupted(f"cross-validation interrupted with {len(unfinished)} "
                               "unfinished fold trial(s)")
    runs = tracking.list_trial_runs(context.tracking_uri, context.experiment_id,
                                    context.parent_run_id, kind=tracking.KIND_CV_TRIAL)
    return pd.DataFrame([{"finalist": r.data.tags.get(tracking.TAG_FINALIST),
                          "fold": r.data.tags.get(tracking.TAG_FOLD),
                          "replicate": r.data.tags.get(tracking.TAG_REPLICATE, "0"),
                          "status": r.data.tags.get(tracking.TAG_STATUS)} for r in runs])
