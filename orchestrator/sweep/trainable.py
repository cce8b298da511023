"""The worker side of a sweep: the Tune trainable around `train_trial`, run in each trial's
process. It imports neither MLflow nor the data-preparation stack: a trial process starts with
Ray, Tune and TensorFlow only (the driver's `tracker.TrialTracker` writes every MLflow record).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ray import tune

from orchestrator import console
from orchestrator.train.config import TrialConfig
from orchestrator.naming import cv_run_name, replicate_of, replicate_seed, trial_run_name
from orchestrator.train.artifacts import EpochReport, TrialData
from orchestrator.train.trial import train_trial
from orchestrator.sweep.parallel import data_parallel, worker_share
from orchestrator.sweep.shared_data import SharedData
from orchestrator.sweep.staged import (FINALIST_KEY, FOLD_KEY, FOLD_TRIAL_KEYS,
                                       is_fold_trial)

NODE_KEY = "node_id"  # reported with every epoch: where the trial's current attempt runs
PHASE_KEY = "phase"  # the unfreezing phase of the epoch: logged as a tag


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
    workers_per_trial: int = 1  # data-parallel workers per trial (`parallel.py`)
    task_key: str = ""  # e.g. "brain/3class": the `task` param of every run means this
    searched: tuple[str, ...] = ()  # the keys Tune samples: what trial run names show


def trial_config(sampled: Mapping[str, Any], context: SweepContext) -> TrialConfig:
    """The sampled config plus what one worker's resources dictate (threads, GPU share). A
    fold trial (`staged.py`) is its finalist's config with `cv_fold` set; an extra seed
    (`--replicates`) trains with `replicate_seed`."""
    cpus, gpus = worker_share(context.cpus_per_trial, context.gpus_per_trial,
                              context.workers_per_trial)
    if is_fold_trial(sampled):
        base = {k: v for k, v in sampled.items() if k not in FOLD_TRIAL_KEYS}
        sampled = {**base, "seed": replicate_seed(int(base.get("seed", 0)),
                                                  replicate_of(sampled))}
    return TrialConfig.from_dict({
        **sampled,
        "cpu_threads": max(1, int(cpus)),
        "gpu_memory_fraction": gpus if 0.0 < gpus < 1.0 else 0.0,
    })


def run_name(trial_id: str, sampled: Mapping[str, Any], context: SweepContext) -> str:
    """What the console and the MLflow runs table call a trial: `t03 three_phase lr x4.042`
    for a search trial, `cv t03 fold 2/3` for a fold trial."""
    if not is_fold_trial(sampled):
        return trial_run_name(trial_id, sampled, context.searched)
    return cv_run_name(sampled[FINALIST_KEY], int(sampled[FOLD_KEY]),
                       int(sampled.get("cv_folds") or 0), replicate_of(sampled))


def run_tune_trial(config: dict, datasets: SharedData, folded: SharedData | None,
                   context: SweepContext) -> None:
    """One Tune trial, of the search (on `datasets`) or a fold trial (on `folded`): train,
    report each epoch with its checkpoint, resume from the last one."""
    shared = folded if is_fold_trial(config) else datasets
    _train_reporting(trial_config(config, context), shared, context.workers_per_trial)


def _train_reporting(cfg: TrialConfig, shared: SharedData, workers: int) -> None:
    """Train (as worker 0 of `workers`), report each epoch with its checkpoint, resume."""
    console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
    console.quiet_process()
    _fresh_keras()
    trial = tune.get_context()
    checkpoint = tune.get_checkpoint()
    data = shared.trial_data(cfg)
    with data_parallel(cfg, shared, workers, checkpoint) as (strategy, nodes):
        _train(cfg, data, trial, checkpoint, strategy, ",".join(nodes))


def _train(cfg: TrialConfig, data: TrialData, trial, checkpoint, strategy, node: str) -> None:
    def report(epoch: EpochReport) -> None:
        tune.report({**epoch.metrics, "epoch": epoch.epoch, NODE_KEY: node},
                    checkpoint=tune.Checkpoint.from_directory(str(epoch.checkpoint_dir)))

    # The trainer's working folder sits outside the trial's folder: Tune uploads that folder
    # with the experiment state while the trainer renames a new checkpoint into place, and the
    # upload then fails on a vanished file. Every epoch's checkpoint is persisted by
    # `tune.report` before it returns, so the working folder is only scratch.
    output_dir = Path(tempfile.mkdtemp(prefix=f"medsweep-trial-{trial.get_trial_id()}-"))
    try:
        if checkpoint is None:
            train_trial(cfg, data, output_dir=output_dir, report=report, log=console.trial_log,
                        strategy=strategy)
            return
        with checkpoint.as_directory() as resume_from:
            train_trial(cfg, data, output_dir=output_dir, report=report,
                        resume_from=resume_from, log=console.trial_log, strategy=strategy)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _fresh_keras() -> None:
    """A reused actor (`reuse_actors`) runs trial after trial in one process: each starts from
    a clean Keras state (no graph, layer-name counters or cached functions of the last one).
    TensorFlow's threads and GPU memory cap were fixed by the first trial; every later one asks
    for the same, since Tune reuses an actor only for trials with the same resources."""
    import keras

    keras.backend.clear_session(free_memory=True)
