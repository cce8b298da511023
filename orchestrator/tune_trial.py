"""The Ray side of a sweep: the Tune trainable around `train_trial`, and the driver callback
that closes each trial's MLflow run. Thin wrappers: the training and the MLflow calls live in
`train` and `tracking`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray
from ray import tune

from orchestrator import tracking
from orchestrator.config import TrialConfig
from orchestrator.train import EpochReport, TrialData, train_trial
from orchestrator.trainer import BEST_FILES, STATE



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


def trial_config(sampled: Mapping[str, Any], context: SweepContext) -> TrialConfig:
    """The sampled config plus what the trial's resources dictate (threads, GPU share)."""
    gpus = context.gpus_per_trial
    return TrialConfig.from_dict({
        **sampled,
        "cpu_threads": max(1, int(context.cpus_per_trial)),
        "gpu_memory_fraction": gpus if 0.0 < gpus < 1.0 else 0.0,
    })


def _child_run(context: SweepContext, trial_id: str, trial_name: str, cfg: TrialConfig) -> str:
    return tracking.get_or_create_trial_run(
        context.tracking_uri, context.experiment_id, context.parent_run_id, trial_id,
        trial_name, params=cfg.to_dict())


def run_tune_trial(config: dict, datasets: dict[int, TrialData], context: SweepContext) -> None:
    """One Tune trial: train, report each epoch with its checkpoint, resume from the last one."""
    trial = tune.get_context()
    cfg = trial_config(config, context)
    run_id = _child_run(context, trial.get_trial_id(), trial.get_trial_name(), cfg)
    tracking.set_tags(context.tracking_uri, run_id,
                      {tracking.TAG_NODE: ray.get_runtime_context().get_node_id()})

    def report(epoch: EpochReport) -> None:
        tracking.log_epoch_metrics(context.tracking_uri, run_id, epoch.metrics, epoch.epoch)
        tune.report({**epoch.metrics, "epoch": epoch.epoch},
                    checkpoint=tune.Checkpoint.from_directory(str(epoch.checkpoint_dir)))

    output_dir = Path(trial.get_trial_dir()) / "trial"
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train_trial(cfg, datasets[cfg.resolution], output_dir=output_dir, report=report)
        return
    with checkpoint.as_directory() as resume_from:
        train_trial(cfg, datasets[cfg.resolution], output_dir=output_dir, report=report,
                    resume_from=resume_from)


class TrialRunCloser(tune.Callback):
    """On the driver: when a trial ends (completed, stopped by ASHA, or failed for good), log its
    best model and validation probabilities from its last checkpoint, then mark its run."""

    def __init__(self, context: SweepContext) -> None:
        self.context = context

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch", 0)
        self._close(trial, tracking.STATUS_COMPLETED if epoch >= self.context.max_epochs
                    else tracking.STATUS_STOPPED_EARLY)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, tracking.STATUS_ERRORED)

    def _close(self, trial, status: str) -> None:
        ctx = self.context
        run_id = _child_run(ctx, trial.trial_id, str(trial), trial_config(trial.config, ctx))
        checkpoint = trial.checkpoint
        extra = {tracking.TAG_EPOCHS_RUN: str((trial.last_result or {}).get("epoch", 0))}
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                tracking.log_trial_files(ctx.tracking_uri, run_id, Path(directory),
                                         BEST_FILES + (STATE,))
                state = json.loads((Path(directory) / STATE).read_text())
                extra[tracking.TAG_BEST_EPOCH] = str(state["best_epoch"])
                extra[tracking.TAG_CHECKPOINT] = checkpoint.path
        tracking.set_trial_status(ctx.tracking_uri, run_id, status, extra_tags=extra)
