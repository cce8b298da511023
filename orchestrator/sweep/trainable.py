"""The Ray side of a sweep: the Tune trainable around `train_trial`, and the driver callback
that writes each trial's MLflow run. Thin wrappers: the training and the MLflow calls live in
`train` and `tracking`.

Only the driver talks to MLflow. Trials report their epochs to Tune, and `TrialTracker` (a Tune
callback, on the driver) logs them. On a cluster the tracking server stays bound to the head
node's loopback: GPU workers never need to reach it, nor hold its credentials.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from orchestrator import console, tracking
from orchestrator.config import TrialConfig
from orchestrator.sweep.records import (cv_run_name, replicate_of, replicate_seed,
                                       trial_run_name)
from orchestrator.train.artifacts import (CHECKPOINT_FILES, STATE, EpochReport, FoldedData,
                                          TrialData)
from orchestrator.train.trial import train_trial

NODE_KEY = "node_id"  # reported with every epoch: where the trial's current attempt runs
PHASE_KEY = "phase"  # the unfreezing phase of the epoch: logged as a tag
TAG_PHASE = "medsweep.phase"
TAG_STOPPED_BY = "medsweep.stopped_by"
# What Tune adds to a reported result besides AUTO_RESULT_KEYS; none of it is a trial's metric.
_TUNE_KEYS = frozenset({*AUTO_RESULT_KEYS, "epoch", NODE_KEY, "done", "trial_id",
                        "experiment_tag", "should_checkpoint", "training_iteration"})


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares; small and picklable (it travels with the Tuner)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str  # the reported key, e.g. "val_accuracy"
    mode: str
    max_epochs: int
    cpus_per_trial: float
    gpus_per_trial: float
    # The cross-validation stage: each trial samples {"finalist": i, "cv_fold": k} and retrains
    # finalists[i] (a search trial's config, `epochs` set to its best epoch) on fold k.
    finalists: tuple[tuple[str, dict], ...] = ()  # (search trial id, config)
    task_key: str = ""  # e.g. "brain/3class": the `task` param of every run means this
    searched: tuple[str, ...] = ()  # the keys Tune samples: what trial run names show

    @property
    def is_cv(self) -> bool:
        return bool(self.finalists)


def trial_config(sampled: Mapping[str, Any], context: SweepContext) -> TrialConfig:
    """The sampled config plus what the trial's resources dictate (threads, GPU share)."""
    gpus = context.gpus_per_trial
    if context.is_cv:
        base = context.finalists[int(sampled["finalist"])][1]
        sampled = {**base, "cv_fold": int(sampled["cv_fold"]),
                   "seed": replicate_seed(int(base.get("seed", 0)), replicate_of(sampled))}
    return TrialConfig.from_dict({
        **sampled,
        "cpu_threads": max(1, int(context.cpus_per_trial)),
        "gpu_memory_fraction": gpus if 0.0 < gpus < 1.0 else 0.0,
    })


def run_name(trial_id: str, sampled: Mapping[str, Any], context: SweepContext) -> str:
    """What the console and the MLflow runs table call a trial: `t03 three_phase lr x4.042`
    for a search trial, `cv t03 fold 2/3` for a cross-validation one."""
    if not context.is_cv:
        return trial_run_name(trial_id, sampled, context.searched)
    finalist, config = context.finalists[int(sampled["finalist"])]
    return cv_run_name(finalist, int(sampled["cv_fold"]), int(config.get("cv_folds") or 0),
                       replicate_of(sampled))


def run_tune_trial(config: dict, datasets: dict[int, TrialData], context: SweepContext) -> None:
    """One Tune trial: train, report each epoch with its checkpoint, resume from the last one."""
    cfg = trial_config(config, context)
    _train_reporting(cfg, datasets[cfg.resolution])


def _train_reporting(cfg: TrialConfig, data: TrialData) -> None:
    console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
    console.quiet_process()
    _fresh_keras()
    trial = tune.get_context()
    node = ray.get_runtime_context().get_node_id()

    def report(epoch: EpochReport) -> None:
        tune.report({**epoch.metrics, "epoch": epoch.epoch, NODE_KEY: node},
                    checkpoint=tune.Checkpoint.from_directory(str(epoch.checkpoint_dir)))

    # The trainer's working folder sits outside the trial's folder: Tune uploads that folder
    # with the experiment state while the trainer renames a new checkpoint into place, and the
    # upload then fails on a vanished file. Every epoch's checkpoint is persisted by
    # `tune.report` before it returns, so the working folder is only scratch.
    output_dir = Path(tempfile.mkdtemp(prefix=f"medsweep-trial-{trial.get_trial_id()}-"))
    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            train_trial(cfg, data, output_dir=output_dir, report=report, log=console.trial_log)
            return
        with checkpoint.as_directory() as resume_from:
            train_trial(cfg, data, output_dir=output_dir, report=report,
                        resume_from=resume_from, log=console.trial_log)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _fresh_keras() -> None:
    """A reused actor (`reuse_actors`) runs trial after trial in one process: each starts from
    a clean Keras state (no graph, layer-name counters or cached functions of the last one).
    TensorFlow's threads and GPU memory cap were fixed by the first trial; every later one asks
    for the same, since Tune reuses an actor only for trials with the same resources."""
    import keras

    keras.backend.clear_session(free_memory=True)


def run_cv_trial(config: dict, folded: dict[int, FoldedData], context: SweepContext) -> None:
    """One cross-validation trial: a finalist retrained on every fold but one, predicting it."""
    cfg = trial_config(config, context)
    _train_reporting(cfg, folded[cfg.resolution].trial_data(cfg.cv_fold))


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
            if ctx.is_cv:
                finalist = ctx.finalists[int(trial.config["finalist"])][0]
                fold = int(trial.config["cv_fold"])
                kind = tracking.KIND_CV_TRIAL
                tags = {tracking.TAG_FINALIST: finalist, tracking.TAG_FOLD: str(fold),
                        tracking.TAG_REPLICATE: str(replicate_of(trial.config))}
            params = trial_config(trial.config, ctx).to_dict()
            if ctx.task_key:  # the same meaning as the parent run's `task`
                params["task"] = ctx.task_key
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
        done = self.context.is_cv or epoch >= self.context.max_epochs  # CV runs are never cut
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
        tracking.set_trial_status(ctx.tracking_uri, run_id, status, extra_tags=extra)

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
