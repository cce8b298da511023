"""The driver side of a sweep's trials: `TrialTracker`, the Tune callback that writes each
trial's MLflow run. Only the driver talks to MLflow: trials report their epochs to Tune, and
this callback logs them. On a cluster the tracking server stays bound to the head node's
loopback: GPU workers never need to reach it, nor hold its credentials.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from orchestrator import tracking
from orchestrator.naming import (cv_description, cv_trial_name, replicate_of, short_trial_name,
                                 trial_description)
from orchestrator.sweep.staged import FINALIST_KEY, FOLD_KEY, is_fold_trial
from orchestrator.sweep.trainable import NODE_KEY, PHASE_KEY, SweepContext, run_name, trial_config
from orchestrator.train.artifacts import CHECKPOINT_FILES, STATE

from orchestrator.keys import NOTE_TAG, TAG_PHASE, TAG_STOPPED_BY  # noqa: E402
# What Tune adds to a reported result besides AUTO_RESULT_KEYS; none of it is a trial's metric.
_TUNE_KEYS = frozenset({*AUTO_RESULT_KEYS, "epoch", NODE_KEY, "done", "trial_id",
                        "experiment_tag", "should_checkpoint", "training_iteration"})


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """A reported result less Tune's bookkeeping and the phase (a tag, not a figure to plot):
    the trial's own figures for that epoch."""
    return {k: v for k, v in result.items() if k not in _TUNE_KEYS and k != PHASE_KEY}


def improved(value: float, best: float | None, mode: str) -> bool:
    if value != value:  # NaN never improves
        return False
    return best is None or (value > best if mode == "max" else value < best)


class TrialTracker(tune.Callback):
    """On the driver, every MLflow write for the trials: a run per trial (found again, never
    duplicated, when a trial is retried or the sweep resumed), its epochs as they are reported,
    the node it runs on; when it ends (completed, stopped by ASHA, or failed for good), its best
    model and validation probabilities from its last checkpoint, then its status."""

    def __init__(self, context: SweepContext) -> None:
        self.context = context
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._best: dict[str, tuple[float, int]] = {}  # trial id -> (best metric, its epoch)
        self._nodes: dict[str, str] = {}  # trial id -> node tagged last

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self._runs:
            ctx = self.context
            kind, tags = tracking.KIND_TRIAL, {}
            if is_fold_trial(trial.config):
                finalist = trial.config[FINALIST_KEY]
                fold = int(trial.config[FOLD_KEY])
                kind = tracking.KIND_CV_TRIAL
                replicate = replicate_of(trial.config)
                tags = {tracking.TAG_FINALIST: short_trial_name(finalist),
                        tracking.TAG_FOLD: str(fold), tracking.TAG_REPLICATE: str(replicate),
                        tracking.TAG_TRIAL_ID: cv_trial_name(finalist, replicate, fold)}
            params = trial_config(trial.config, ctx).to_dict()
            if ctx.task_key:  # the same meaning as the parent run's `task`
                params["task"] = ctx.task_key
            params["workers_per_trial"] = ctx.workers_per_trial
            self._runs[trial.trial_id] = tracking.get_or_create_trial_run(
                ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial.trial_id,
                run_name(trial.trial_id, trial.config, ctx), params=params, kind=kind, tags=tags)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id, uri = self._run_id(trial), self.context.tracking_uri
        node = result.get(NODE_KEY)
        if node and self._nodes.get(trial.trial_id) != node:
            tracking.set_tags(uri, run_id, {tracking.TAG_NODE: node})
            self._nodes[trial.trial_id] = node
        if "epoch" in result:
            epoch = int(result["epoch"])
            figures = epoch_metrics(result)
            value = figures.get(self.context.metric)
            best = self._best.get(trial.trial_id)
            if best is None:  # a resumed sweep: the best so far is in MLflow already
                best = self._best_so_far(run_id)
            if isinstance(value, (int, float)) and improved(float(value), best and best[0],
                                                              self.context.mode):
                best = (float(value), epoch)
            if best is not None:
                self._best[trial.trial_id] = best
                figures.update({f"best_{self.context.metric}": best[0], "best_epoch": best[1]})
            tracking.log_epoch_metrics(uri, run_id, figures, epoch)
            if PHASE_KEY in result:
                tracking.set_tags(uri, run_id, {TAG_PHASE: str(result[PHASE_KEY])})

    def _best_so_far(self, run_id: str) -> tuple[float, int] | None:
        history = tracking.metric_history(self.context.tracking_uri, run_id,
                                          (self.context.metric,))
        if history.empty:
            return None
        values = history.dropna(subset=["value"])
        if values.empty:
            return None
        row = values.loc[values["value"].idxmax() if self.context.mode == "max"
                         else values["value"].idxmin()]
        return float(row["value"]), int(row["step"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch", 0)
        done = is_fold_trial(trial.config) or epoch >= self.context.max_epochs  # never cut
        self._close(trial, tracking.STATUS_COMPLETED if done else tracking.STATUS_STOPPED_EARLY,
                    {} if done else {TAG_STOPPED_BY: f"ASHA after epoch {epoch} of "
                                                     f"{self.context.max_epochs}"})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, tracking.STATUS_ERRORED)

    def _close(self, trial, status: str, tags: Mapping[str, str] | None = None) -> None:
        ctx = self.context
        run_id = self._run_id(trial)
        checkpoint = trial.checkpoint
        extra = {**(tags or {}),
                 tracking.TAG_EPOCHS_RUN: str((trial.last_result or {}).get("epoch", 0))}
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                tracking.log_trial_files(ctx.tracking_uri, run_id, Path(directory),
                                         CHECKPOINT_FILES + (STATE,))
                state = json.loads((Path(directory) / STATE).read_text())
                extra[tracking.TAG_BEST_EPOCH] = str(state["best_epoch"])
                extra[tracking.TAG_CHECKPOINT] = checkpoint_uri(checkpoint)
        self._log_curves(run_id, run_name(trial.trial_id, trial.config, ctx))
        extra[NOTE_TAG] = self._description(trial, status, run_id)
        tracking.set_trial_status(ctx.tracking_uri, run_id, status, extra_tags=extra)

    def _description(self, trial, status: str, run_id: str) -> str:
        """The run page's one line: what the run is and its best figure, rounded."""
        ctx = self.context
        best = self._best.get(trial.trial_id) or self._best_so_far(run_id)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        config = trial.config
        if not is_fold_trial(config):
            return trial_description(trial.trial_id, ctx.metric, best, epochs, ctx.max_epochs,
                                     status)
        return cv_description(config[FINALIST_KEY], replicate_of(config), int(config[FOLD_KEY]),
                              int(config.get("cv_folds") or 0), ctx.metric, best, status)

    def _log_curves(self, run_id: str, name: str) -> None:
        """training_curves.png in the trial's run; a figure is never worth failing a sweep."""
        import tempfile

        from orchestrator.clinical.plots import training_curves

        uri = self.context.tracking_uri
        try:
            history = tracking.metric_history(uri, run_id, ("loss", "val_loss",
                                                             self.context.metric))
            if history.empty:
                return
            with tempfile.TemporaryDirectory() as tmp:
                path = training_curves(history, self.context.metric,
                                       Path(tmp) / "training_curves.png", name)
                tracking.log_file(uri, run_id, path)
        except Exception as err:  # noqa: BLE001
            print(f"warning: no training curves for trial {name}: {err}")


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    """A checkpoint's location that any node can open again: a local (shared) path as it is,
    anything else as a URI (`Checkpoint.path` drops the scheme: s3://bucket/x is "bucket/x")."""
    kind = checkpoint.filesystem.type_name if checkpoint.filesystem is not None else "local"
    if kind == "local":
        return checkpoint.path
    return f"{ {'gcs': 'gs'}.get(kind, kind)}://{checkpoint.path}"
