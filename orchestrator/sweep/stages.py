"""The stages of one sweep, started or resumed (`SweepRunner`): the data prepared once, the
MLflow parent run opened, one Tune experiment for the search and the cross-validation of its
finalists (`staged.py` queues each finalist's fold trials once it is certain; `cv.py`), the
leaderboard, and the parent run closed (`finish`). `runner.run_sweep` checks everything and
starts Ray before it, and builds the final ensemble after it.
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from orchestrator import tracking
from orchestrator.cluster import Log, check_trial_fits
from orchestrator.train.config import TrialConfig
from orchestrator.data.splits import MANIFEST_CSV, MANIFEST_JSON
from orchestrator.errors import SweepInterrupted
from orchestrator.sweep.budget import Budget
from orchestrator.sweep.cv import cv_table, folded_data
from orchestrator.sweep.parallel import trial_resources, worker_share
from orchestrator.sweep.shared_data import SharedData
from orchestrator.sweep.staged import (NumberedTrials, SearchOnlyASHA, StagedSearch,
                                       is_fold_trial)
from orchestrator.sweep.search import TPE_STARTUP, check_search, make_search
from orchestrator.sweep.records import (DATA_FACTS, LEADERBOARD_COLUMNS, data_facts, data_line,
                                        data_records, leaderboard)
from orchestrator.sweep.state import (SweepState, fetch_recorded_data, is_uri, read_sweep_state,
                                      save_recorded_data, write_sweep_state)
from orchestrator.sweep.summary import record_summary
from orchestrator.sweep.trainable import SweepContext, run_tune_trial
from orchestrator.sweep.tuner import make_tuner, unfinished_trials
from orchestrator.train.artifacts import FoldedData, TrialData
from orchestrator.train.trial import load_trial_data
from search_spaces import (check_space, discrete_values, get_profile, is_dimension,
                           overrides_space, space_to_json)
from tasks.base import Task


@dataclass
class SweepResult:
    parent_run_id: str
    experiment_path: str
    tracking_uri: str
    metric: str
    mode: str
    leaderboard: pd.DataFrame  # one row per trial, best first
    ui_command: str
    runs_url: str = ""  # the sweep's trials, best first, in the runs table of that UI
    ensemble: Any = None  # orchestrator.ensemble.report.EnsembleReport, when one was built
    data_facts: dict = field(default_factory=dict)  # images used, left out, duplicate pairs


@dataclass(frozen=True)
class Searched:
    """Where the search (and the cross-validation after it) left a sweep: what the ensemble
    stage and `SweepRunner.finish` continue from."""

    context: SweepContext
    path: str  # the sweep's Tune folder (a local path or a URI)
    board: pd.DataFrame  # the leaderboard, best first
    errored: int  # trials that failed for good

    @property
    def trained_any(self) -> bool:
        return self.errored < len(self.board)



class SweepRunner:
    """The search and cross-validation stages of one sweep, started or resumed."""

    def __init__(self, *, task: str, task_record: Task, data_dir: str | None,
                 profile: str, budget_overrides: dict, storage: str,
                 experiment: str, tracking_uri: str, seed: int, space_overrides: dict,
                 scheduler: str, log: Log, reuse_actors: bool = True,
                 search: str | None = None, subgroups: tuple[str, ...] = ()) -> None:
        """Everything here is checked without Ray; `check_fits` asks the cluster."""
        base = get_profile(task, profile)
        self.budget = Budget.of(base, budget_overrides)
        self.profile = self.budget.applied(base)
        self.task, self.task_record, self.data_dir = task, task_record, data_dir
        self.subgroups = subgroups  # recorded with the split (`data.subgroups.record`)
        self.storage, self.experiment, self.uri, self.seed, self.log = (
            storage, experiment, tracking_uri, seed, log)
        self.metric = f"val_{task_record.metric}"
        self.space_overrides = space_overrides
        check_space(self._space(), f"profile {self.profile.name} with --set")
        self.scheduler = scheduler
        self.search = check_search(search, self.profile.trials)
        # a process holds one TensorFlow cluster (TF_CONFIG): data-parallel trials never share it
        self.reuse_actors = reuse_actors and self.budget.workers_per_trial == 1
        self.data_facts: dict[str, int] = {}
        self.manifest: Path | None = None  # the recorded split, once the data are prepared

    # --------------------------------------------------------------------------- public
    def check_fits(self, *, cluster_can_grow: bool) -> None:
        """Refuse, before any trial, a trial that this Ray can never hold (`check_trial_fits`)."""
        b = self.budget
        check_trial_fits(*worker_share(b.cpus_per_trial, b.gpus_per_trial, b.workers_per_trial),
                         self.log, can_grow=cluster_can_grow, workers=b.workers_per_trial)

    def prepare_data(self) -> dict[int, TrialData]:
        """The search's data, decoded at each resolution of the space (no Ray needed)."""
        return self._prepare_data(self._space())

    def start(self, datasets: dict[int, TrialData] | None = None) -> Searched:
        """Start the sweep; `datasets`: what `prepare_data` returned, if it already ran."""
        space = self._space()
        datasets = datasets if datasets is not None else self._prepare_data(space)
        any_data = next(iter(datasets.values()))
        if self.subgroups:  # before the manifest is logged: it travels with the split
            from orchestrator.data.subgroups import record

            record(Path(any_data.manifest_path), any_data.task, self.data_dir, self.subgroups,
                   self.log)
        records = data_records(Path(any_data.manifest_path))
        facts = self.data_facts = data_facts(records)
        self.log(data_line(facts))
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
                    "profile": self.profile.name, **self.budget.to_dict(),
                    "trials": self.profile.trials, "data_fingerprint": any_data.fingerprint,
                    "synthetic_data": any_data.synthetic, "data_dir": self.data_dir or "phantom",
                    "metric": self.metric, "mode": self.task_record.mode, "seed": self.seed,
                    "scheduler": self.scheduler, "search": self.search,
                    "storage_path": path, **facts,
                    "keep_duplicates": bool(space.get("keep_duplicates", False)),
                    "duplicate_threshold": space.get("duplicate_threshold",
                                                        TrialConfig.duplicate_threshold),
                    **({"positive_class": space["positive_class"]}
                       if space.get("positive_class") else {}),
                    **{k: space[k] for k in ("dicom_window", "dicom_frame") if k in space}},
            artifacts={"search_space.json": self._space_file(space), **records})
        context = self._context(experiment_id, parent)
        state = SweepState(parent_run_id=parent, experiment_id=experiment_id,
                           tracking_uri=self.uri, task=self.task, profile=self.profile.name,
                           data_dir=self.data_dir, name=name, path=path, budget=self.budget,
                           space_overrides=self.space_overrides, search=self.search)
        searcher, draws = make_search(self.search, space, seed=self.seed,
                                      trials=self.profile.trials, metric=self.metric,
                                      mode=self.task_record.mode)
        b = self.budget
        staged = StagedSearch(searcher, search_trials=draws, top=b.cv_top, folds=b.cv_folds,
                              replicates=b.replicates, metric=self.metric,
                              mode=self.task_record.mode)
        tuner = make_tuner(
            self._trainable(datasets, self._fold_data(space), context), context=context,
            name=name, storage=self.storage, space={}, num_samples=staged.max_trials,
            scheduler=self._scheduler(), log=self.log,
            columns=[k for k, v in space.items() if is_dimension(v)], keep_checkpoints=2,
            score_checkpoints=True, reuse_actors=self.reuse_actors,
            search_alg=NumberedTrials(staged))
        write_sweep_state(path, state)
        save_recorded_data(path, records)
        self.log(self._search_line())
        return self._search(tuner, context, path)

    def resume(self, previous: str) -> Searched:
        """Continue the sweep in `previous`, its folder's local path or URI."""
        state = read_sweep_state(previous)
        self.log(f"resuming sweep {state.name} (MLflow parent run {state.parent_run_id})")
        self.data_dir = state.data_dir
        self.budget = state.budget
        self.profile = state.budget.applied(get_profile(state.task, state.profile))
        self.space_overrides = state.space_overrides
        self.search = state.search  # its state is restored with Tune's
        self.reuse_actors = self.reuse_actors and self.budget.workers_per_trial == 1
        scratch = tempfile.mkdtemp(prefix="medsweep-recorded-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        recorded = fetch_recorded_data(previous, (MANIFEST_CSV, MANIFEST_JSON), Path(scratch))
        if recorded is None:
            self.log("warning: this sweep recorded no manifest; splitting its data again")
        datasets = self._prepare_data(self._space(),
                                      recorded / MANIFEST_CSV if recorded else None)
        self.data_facts = {k: int(v) for k, v in tracking.get_run(
            self.uri, state.parent_run_id).data.params.items() if k in DATA_FACTS}
        if len(self.data_facts) == len(DATA_FACTS):
            self.log(data_line(self.data_facts))
        tracking.reopen_run(self.uri, state.parent_run_id)
        context = self._context(state.experiment_id, state.parent_run_id)
        folded = self._fold_data(self._space())
        tuner = make_tuner(self._trainable(datasets, folded, context), context=context,
                           name=state.name,
                           storage=self.storage, space={}, num_samples=0, scheduler=None,
                           log=self.log, columns=(), keep_checkpoints=2,
                           score_checkpoints=True, reuse_actors=self.reuse_actors,
                           restore=previous)
        return self._search(tuner, context, previous)

    # -------------------------------------------------------------------------- helpers
    def _search_line(self) -> str:
        """What the search is about to run; one line per trial and epoch follows."""
        p = self.profile
        stop = ("every trial runs all its epochs" if self.scheduler == "fifo" else
                f"ASHA stops trailing trials from epoch {p.grace_period}")
        trials = f"{p.trials} trial{'s' if p.trials != 1 else ''}"
        how = ("drawn at random" if self.search == "random" else
               f"drawn by TPE (Optuna, seed {self.seed}; the first {TPE_STARTUP} at random)")
        fixed = [f"{k} {v}" for k, v in self._space().items()
                 if k in LEADERBOARD_COLUMNS and not is_dimension(v) and v is not None]
        b = self.budget
        seeds = f" x {b.replicates} seeds" if b.replicates > 1 else ""
        folds = (f"; then the {b.cv_top} best{seeds} retrained on {b.cv_folds} folds, each "
                 "finalist's fold trials as soon as no trial left can overtake it"
                 if b.cv_folds else "")
        return (f"search: {trials} of up to {p.max_epochs} epochs, {how}; {stop}"
                + (f"; the same in every trial: {', '.join(fixed)}" if fixed else "") + folds)

    def _space(self) -> dict:
        """The profile's space with the overrides laid over it: what Tune samples."""
        return {**self.profile.space, **overrides_space(self.space_overrides),
                "data_dir": self.data_dir, "cv_folds": self.budget.cv_folds}

    def _prepare_data(self, space: dict, manifest: Path | None = None) -> dict[int, TrialData]:
        """Decode each resolution once on the driver; Tune ships the arrays to the object store
        once (`tune.with_parameters`), never re-decoded or re-pickled per trial. The first
        resolution splits (unless `manifest` holds a recorded split); every other one loads
        that split from its manifest: one recorded split is the only source."""
        resolutions = discrete_values(space["resolution"], "resolution")
        base = TrialConfig.from_dict({k: v for k, v in space.items() if not is_dimension(v)})
        datasets = {}
        for r in resolutions:
            datasets[int(r)] = load_trial_data(base.replace(resolution=int(r)), self.log,
                                               manifest=manifest)
            manifest = manifest or Path(datasets[int(r)].manifest_path)
        self.manifest = manifest
        return datasets

    def _fold_data(self, space: dict) -> dict[int, FoldedData] | None:
        """The recorded split's folds at each resolution of the space; None without folds."""
        if not self.budget.cv_folds:
            return None
        base = TrialConfig.from_dict({k: v for k, v in space.items() if not is_dimension(v)})
        return folded_data(base, discrete_values(space["resolution"], "resolution"),
                           self.manifest, self.log)

    def _scheduler(self):
        """ASHA stops search trials that trail at each rung (never a fold trial); FIFO runs
        every trial to the end (the baseline `bench/sweep_efficiency.py` compares against)."""
        if self.scheduler == "fifo":
            return FIFOScheduler()
        return SearchOnlyASHA(time_attr="epoch", max_t=self.budget.max_epochs,
                              grace_period=self.budget.grace_period, reduction_factor=2)

    def _trainable(self, datasets: dict[int, TrialData], folded: dict[int, FoldedData] | None,
                   context: SweepContext):
        return tune.with_resources(
            tune.with_parameters(run_tune_trial, datasets=SharedData.put(datasets),
                                 folded=SharedData.put(folded) if folded else None,
                                 context=context),
            self._resources())

    def _resources(self):
        b = self.budget
        return trial_resources(b.cpus_per_trial, b.gpus_per_trial, b.workers_per_trial)

    def _context(self, experiment_id: str, parent: str) -> SweepContext:
        searched = tuple(k for k, v in self._space().items() if is_dimension(v))
        return SweepContext(tracking_uri=self.uri, experiment_id=experiment_id,
                            parent_run_id=parent, metric=self.metric,
                            mode=self.task_record.mode, max_epochs=self.budget.max_epochs,
                            cpus_per_trial=self.budget.cpus_per_trial,
                            gpus_per_trial=self.budget.gpus_per_trial,
                            workers_per_trial=self.budget.workers_per_trial,
                            task_key=self.task_record.key, searched=searched)

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

    def _search(self, tuner: tune.Tuner, context: SweepContext, path: str) -> Searched:
        """Run the search and its finalists' fold trials to their end, or raise
        SweepInterrupted with the command that resumes it."""
        grid = tuner.fit()
        unfinished = unfinished_trials(grid, context)
        if unfinished:
            tracking.finish_run(self.uri, context.parent_run_id, "KILLED")
            raise SweepInterrupted(
                f"sweep interrupted with {len(unfinished)} unfinished trial(s); its state is "
                f"saved in {path}. Continue it with: python -m orchestrator.sweep {self.task} "
                f"--resume" + (f" --storage-path {self.storage}" if self.storage else ""))
        search = [r for r in grid if not is_fold_trial(r.config or {})]
        board = leaderboard(search, self.metric, self.task_record.mode, self.budget.max_epochs)
        tracking.log_table_artifact(self.uri, context.parent_run_id, board, "tune_results.csv")
        searched = Searched(context=context, path=path, board=board,
                            errored=sum(1 for r in search if r.error is not None))
        if self.budget.cv_folds and searched.trained_any:
            if len(search) == len(grid):
                self.log("warning: no finished trial to cross-validate")
            else:
                tracking.log_table_artifact(self.uri, context.parent_run_id, cv_table(context),
                                            "cv_runs.csv")
        return searched

    def finish(self, searched: Searched, ensemble) -> SweepResult:
        """The sweep's summary note and its parent run closed: FAILED when no trial trained."""
        context = searched.context
        trials = tracking.share_trials_view(self.uri, context.experiment_id,
                                            context.parent_run_id, self.metric,
                                            self.task_record.mode, context.searched)
        record_summary(self.uri, context.experiment_id, context.parent_run_id, searched.board,
                       self.metric, self.task_record.metric, ensemble, trials)
        tracking.finish_run(self.uri, context.parent_run_id,
                            "FINISHED" if searched.trained_any else "FAILED")
        return SweepResult(parent_run_id=context.parent_run_id, experiment_path=searched.path,
                           tracking_uri=self.uri, metric=self.task_record.metric,
                           mode=self.task_record.mode, leaderboard=searched.board,
                           ui_command=tracking.ui_command(self.uri,
                                                          tracking.local_artifact_root(self.uri)),
                           runs_url=tracking.ui_url(self.uri, trials),
                           ensemble=ensemble, data_facts=self.data_facts)
