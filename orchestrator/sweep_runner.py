"""Assembles one sweep: data on the driver, the MLflow parent run, the Tuner, the leaderboard."""
from __future__ import annotations

import atexit
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from orchestrator import tracking

# Per-epoch checkpoints are the point; Tune's warning about frequent snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
from orchestrator.config import TrialConfig
from orchestrator.errors import SweepInterrupted
from orchestrator.sweep import (SWEEP_STATE, Log, SweepResult, is_uri, read_sweep_state,
                                 storage_filesystem)
from orchestrator.train import TrialData, load_trial_data
from orchestrator.tune_trial import SweepContext, TrialTracker, run_tune_trial
from search_spaces import choose_profile, get_profile, space_to_json, with_overrides
from tasks.base import Task

LEADERBOARD_COLUMNS = ("backbone", "resolution", "schedule", "lr_multiplier", "loss",
                       "augment", "mixup_alpha", "label_smoothing", "batch_size")


class SweepRunner:
    def __init__(self, *, task: str, task_record: Task, data_dir: str | None,
                 profile: str | None, num_samples: int | None, max_epochs: int | None,
                 cpus_per_trial: float | None, gpus_per_trial: float | None, storage: str,
                 experiment: str, tracking_uri: str, seed: int, space_overrides: dict,
                 scheduler: str, build_ensemble: bool, log: Log) -> None:
        name = profile or choose_profile(ray.cluster_resources())
        self.profile = with_overrides(get_profile(task, name), num_samples=num_samples,
                                      max_epochs=max_epochs, cpus_per_trial=cpus_per_trial,
                                      gpus_per_trial=gpus_per_trial)
        self.task, self.task_record, self.data_dir = task, task_record, data_dir
        self.storage, self.experiment, self.uri, self.seed, self.log = (
            storage, experiment, tracking_uri, seed, log)
        self.metric = f"val_{task_record.metric}"
        self.space_overrides = space_overrides
        self.scheduler = scheduler
        self.build_ensemble = build_ensemble

    # --------------------------------------------------------------------------- public
    def start(self) -> SweepResult:
        space = {**self.profile.space, **self.space_overrides, "data_dir": self.data_dir}
        datasets = self._prepare_data(space)
        any_data = next(iter(datasets.values()))
        name = f"{self.experiment}-{datetime.now():%Y%m%d-%H%M%S}"
        path = self._experiment_path(name)
        experiment_id = tracking.ensure_experiment(self.uri, self.experiment,
                                                   tracking.local_artifact_root(self.uri))
        parent = tracking.start_sweep_run(
            self.uri, experiment_id, run_name=name,
            tags={tracking.TAG_TASK: self.task_record.key,
                  tracking.TAG_PROFILE: self.profile.name,
                  tracking.TAG_SYNTHETIC: str(any_data.synthetic).lower()},
            params={**tracking.environment_params(), "task": self.task_record.key,
                    "profile": self.profile.name, "num_samples": self.profile.num_samples,
                    "trials": self.profile.trials,
                    "max_epochs": self.profile.max_epochs, "data_fingerprint": any_data.fingerprint,
                    "synthetic_data": any_data.synthetic, "data_dir": self.data_dir or "phantom",
                    "metric": self.metric, "mode": self.task_record.mode, "seed": self.seed,
                    "scheduler": self.scheduler,
                    "storage_path": path},
            artifacts={"search_space.json": self._space_file(space),
                       "manifest.csv": Path(any_data.manifest_path)})
        context = self._context(experiment_id, parent)
        state = {"parent_run_id": parent, "experiment_id": experiment_id, "tracking_uri": self.uri,
                 "task": self.task, "profile": self.profile.name, "data_dir": self.data_dir,
                 "name": name, "path": path, "num_samples": self.profile.num_samples,
                 "max_epochs": self.profile.max_epochs,
                 "cpus_per_trial": self.profile.cpus_per_trial,
                 "gpus_per_trial": self.profile.gpus_per_trial}
        tuner = tune.Tuner(
            self._trainable(datasets, context),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=self.metric, mode=self.task_record.mode,
                num_samples=self.profile.num_samples,
                search_alg=BasicVariantGenerator(random_state=self.seed),
                scheduler=self._scheduler()),
            run_config=tune.RunConfig(
                name=name, storage_path=self.storage, callbacks=[TrialTracker(context)],
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=self.metric,
                    checkpoint_score_order=self.task_record.mode),
                failure_config=tune.FailureConfig(max_failures=2), verbose=1))
        self._write_state(path, state)
        return self._fit(tuner, context, path)

    def resume(self, previous: str) -> SweepResult:
        """Continue the sweep in `previous`, its folder's local path or URI."""
        state = read_sweep_state(previous)
        self.log(f"resuming sweep {state['name']} (MLflow parent run {state['parent_run_id']})")
        self.data_dir = state["data_dir"]
        self.profile = with_overrides(
            get_profile(state["task"], state["profile"]), num_samples=state["num_samples"],
            max_epochs=state["max_epochs"], cpus_per_trial=state["cpus_per_trial"],
            gpus_per_trial=state["gpus_per_trial"])
        datasets = self._prepare_data({**self.profile.space, "data_dir": self.data_dir})
        tracking.reopen_run(self.uri, state["parent_run_id"])
        context = self._context(state["experiment_id"], state["parent_run_id"])
        tuner = tune.Tuner.restore(previous, trainable=self._trainable(datasets, context),
                                   resume_unfinished=True, resume_errored=True)
        return self._fit(tuner, context, previous)

    # -------------------------------------------------------------------------- helpers
    def _prepare_data(self, space: dict) -> dict[int, TrialData]:
        """Decode each resolution once on the driver; Tune ships the arrays to the object store
        once (`tune.with_parameters`), never re-decoded or re-pickled per trial."""
        resolutions = _values(space["resolution"])
        base = TrialConfig.from_dict({k: v for k, v in space.items()
                                      if not isinstance(v, (dict,)) and not _is_domain(v)})
        return {int(r): load_trial_data(base.replace(resolution=int(r)), self.log)
                for r in resolutions}

    def _scheduler(self):
        """ASHA stops trials that trail at each rung; FIFO runs every trial to the end (the
        baseline `bench/sweep_efficiency.py` compares against)."""
        if self.scheduler == "fifo":
            return FIFOScheduler()
        return ASHAScheduler(time_attr="epoch", max_t=self.profile.max_epochs,
                             grace_period=self.profile.grace_period, reduction_factor=2)

    def _trainable(self, datasets: dict[int, TrialData], context: SweepContext):
        resources = {"cpu": self.profile.cpus_per_trial, "gpu": self.profile.gpus_per_trial}
        return tune.with_resources(
            tune.with_parameters(run_tune_trial, datasets=datasets, context=context), resources)

    def _context(self, experiment_id: str, parent: str) -> SweepContext:
        return SweepContext(tracking_uri=self.uri, experiment_id=experiment_id,
                            parent_run_id=parent, metric=self.metric,
                            mode=self.task_record.mode, max_epochs=self.profile.max_epochs,
                            cpus_per_trial=self.profile.cpus_per_trial,
                            gpus_per_trial=self.profile.gpus_per_trial)

    def _experiment_path(self, name: str) -> str:
        return f"{self.storage.rstrip('/')}/{name}"

    def _space_file(self, space: dict) -> Path:
        text = json.dumps(space_to_json(space), indent=1, default=str)
        if not is_uri(self.storage):
            path = Path(self.storage) / "search_space.json"
            path.write_text(text)
            return path
        # remote storage: a private local copy for MLflow to upload, gone when the driver exits
        with tempfile.NamedTemporaryFile("w", prefix="medsweep-search_space-", suffix=".json",
                                         delete=False) as file:
            file.write(text)
        atexit.register(Path(file.name).unlink, missing_ok=True)
        return Path(file.name)

    def _write_state(self, path: str, state: dict) -> None:
        text = json.dumps(state, indent=1)
        if not is_uri(path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / SWEEP_STATE).write_text(text)
            return
        fs, fs_path = storage_filesystem(path)  # the filesystem Tune writes the sweep to
        fs.create_dir(fs_path, recursive=True)
        with fs.open_output_stream(f"{fs_path.rstrip('/')}/{SWEEP_STATE}") as stream:
            stream.write(text.encode())

    def _fit(self, tuner: tune.Tuner, context: SweepContext, path: str) -> SweepResult:
        grid = tuner.fit()
        # Tune marks trials it stopped for Ctrl+C as TERMINATED too; only the runs our callback
        # closed (completed, stopped by ASHA, errored for good) are really done.
        closed = {run.data.tags.get(tracking.TAG_TRIAL_ID)
                  for run in tracking.list_trial_runs(self.uri, context.experiment_id,
                                                      context.parent_run_id)
                  if run.data.tags.get(tracking.TAG_STATUS) != tracking.STATUS_RUNNING}
        unfinished = [r for r in grid if r.metrics.get("trial_id") not in closed]
        if unfinished:
            tracking.finish_run(self.uri, context.parent_run_id, "KILLED")
            raise SweepInterrupted(
                f"sweep interrupted with {len(unfinished)} unfinished trial(s); its state is "
                f"saved in {path}. Continue it with: python -m orchestrator.sweep {self.task} "
                f"--resume" + (f" --storage-path {self.storage}" if self.storage else ""))
        board = _leaderboard(grid, self.metric, self.task_record.mode)
        tracking.log_table_artifact(self.uri, context.parent_run_id, board, "tune_results.csv")
        errored = sum(1 for r in grid if r.error is not None)
        ensemble = self._ensemble(context) if self.build_ensemble and errored < len(board) \
            else None
        tracking.finish_run(self.uri, context.parent_run_id,
                            "FAILED" if errored == len(board) else "FINISHED")
        return SweepResult(parent_run_id=context.parent_run_id, experiment_path=path,
                           tracking_uri=self.uri, metric=self.task_record.metric,
                           mode=self.task_record.mode, leaderboard=board,
                           ui_command=tracking.ui_command(self.uri,
                                                          tracking.local_artifact_root(self.uri)),
                           ensemble=ensemble)

    def _ensemble(self, context: SweepContext):
        """The final ensemble is part of every sweep; its failure is reported, not fatal: the
        trials stay in MLflow and `python -m orchestrator.ensemble` can redo it."""
        from orchestrator.ensemble.build import build_ensemble
        from orchestrator.errors import MedSweepError

        try:
            return build_ensemble(context.parent_run_id, tracking_uri=self.uri,
                                  gpus_per_actor=min(self.profile.gpus_per_trial, 1.0),
                                  log=self.log)
        except MedSweepError as err:
            self.log(f"warning: no ensemble built: {err}")
            return None


def _leaderboard(grid, metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for result in grid:
        config = result.config or {}
        metrics = result.metrics or {}
        best = result.metrics_dataframe[metric].agg("max" if mode == "max" else "min") \
            if result.metrics_dataframe is not None and metric in result.metrics_dataframe \
            else float("nan")
        rows.append({"trial_id": metrics.get("trial_id", ""), f"best_{metric}": best,
                     "epochs": metrics.get("epoch", 0),
                     "seconds": round(float(metrics.get("time_total_s", float("nan"))), 1),
                     "status": "errored" if result.error else "ok",
                     **{k: config.get(k) for k in LEADERBOARD_COLUMNS if k in config}})
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    return board.sort_values(f"best_{metric}", ascending=(mode == "min"),
                             na_position="last").reset_index(drop=True)


def _is_domain(value) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value)


def _values(value) -> list:
    """The values a search dimension can take (a constant is one value)."""
    from ray.tune.search.sample import Categorical

    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, dict) and "grid_search" in value:
        return list(value["grid_search"])
    if _is_domain(value):
        raise ValueError("resolution must be a constant, a choice or a grid in a search space")
    return [value]
