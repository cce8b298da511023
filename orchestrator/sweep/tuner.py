"""The sweep's Tune set-up (the search and its finalists' fold trials, in one experiment): the
callbacks (MLflow runs, one console line per trial and epoch), checkpoints, retries and progress
table, and the test of which trials really finished."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ray import tune

from orchestrator import tracking
from orchestrator.cluster import set_driver_defaults
from orchestrator.sweep.progress import EpochLines, ProgressTable
from orchestrator.sweep.tracker import TrialTracker
from orchestrator.sweep.trainable import SweepContext

MAX_FAILURES = 2  # a crashed trial is retried from its last checkpoint this many times


def make_tuner(trainable: Any, *, context: SweepContext, name: str, storage: str,
               space: dict, num_samples: int, scheduler: Any, log: Callable[[str], None],
               columns: Sequence[str], keep_checkpoints: int, score_checkpoints: bool,
               reuse_actors: bool, search_alg: Any = None, restore: str | None = None
               ) -> tune.Tuner:
    """A Tuner for one stage, or (`restore`: its folder) the same stage continued."""
    set_driver_defaults()
    if restore:
        return tune.Tuner.restore(restore, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    scored = ({"checkpoint_score_attribute": context.metric,
               "checkpoint_score_order": context.mode} if score_checkpoints else {})
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=context.metric, mode=context.mode,
                                    num_samples=num_samples, search_alg=search_alg,
                                    scheduler=scheduler, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name=name, storage_path=storage,
            callbacks=[TrialTracker(context), EpochLines(context, log)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints, **scored),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=1,
            progress_reporter=ProgressTable(context.metric, list(columns))))


def unfinished_trials(grid: tune.ResultGrid, context: SweepContext) -> list:
    """The trials of `grid` (search and fold trials) whose MLflow run our callback did not
    close: Tune marks trials it stopped for Ctrl+C as TERMINATED too, so only a closed run
    (completed, stopped early, errored for good) is really done."""
    runs = [run for kind in (tracking.KIND_TRIAL, tracking.KIND_CV_TRIAL)
            for run in tracking.list_trial_runs(context.tracking_uri, context.experiment_id,
                                                context.parent_run_id, kind=kind)]
    closed = {tracking.tune_trial_id(run) for run in runs
              if run.data.tags.get(tracking.TAG_STATUS) != tracking.STATUS_RUNNING}
    return [r for r in grid if r.metrics.get("trial_id") not in closed]
