"""A sweep from start to finish: `run_sweep` checks everything on the driver, starts Ray (the
data decoded and MLflow's store opened meanwhile), runs the stages (`stages.SweepRunner`: the
search and the cross-validation of its finalists in one Tune experiment), then the final
ensemble (`orchestrator.ensemble`), and closes the parent run.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from concurrent.futures import Future
from typing import Any, Callable

import ray
from threadpoolctl import threadpool_limits

from orchestrator import console, tracking
from orchestrator.clinical.options import ClinicalOptions
from orchestrator.cluster import Log, connect_ray, local_resources_before_start
from orchestrator.errors import ConfigError, MedSweepError
from orchestrator.sweep.budget import Budget
from orchestrator.sweep.inputs import subgroup_columns, weights_dir_for
from orchestrator.sweep.stages import SweepResult, SweepRunner
from orchestrator.sweep.state import find_resumable
from orchestrator.sweep.state import storage_path as storage_path_for
from orchestrator.sweep.trainable import SweepContext
from search_spaces import check_space, choose_profile, get_profile, overrides_space
from tasks import get_task

SCHEDULERS = ("asha", "fifo")


def run_sweep(
    task: str,
    *,
    data_dir: str | None = None,
    profile: str | None = None,
    num_samples: int | None = None,
    max_epochs: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    workers_per_trial: int | None = None,
    cv_folds: int | None = None,
    cv_top: int | None = None,
    replicates: int | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    seed: int = 0,
    scheduler: str = "asha",
    ensemble: bool = True,
    space_overrides: dict | None = None,
    weights_dir: str | os.PathLike | None = None,
    reuse_actors: bool = True,
    clinical: ClinicalOptions | None = None,
    search: str | None = None,
    log: Log = console.say,
) -> SweepResult:
    """Run (or resume) one sweep and return its leaderboard; see `--help` for each argument.

    `space_overrides` replaces search-space keys: a constant fixes the key, a list makes it a
    choice (`--set backbone=resnet50`, `--set 'resolution=[128,224]'`; tests inject faults so).
    `weights_dir` (else $MEDSWEEP_WEIGHTS_DIR read here, on the driver) becomes the constant
    `weights_dir` of every trial: workers on other nodes do not inherit the driver's environment.
    `reuse_actors`: a trial's process (Python, TensorFlow, the data) serves the next trial of
    the same resources instead of a fresh one being started (False: one process per trial, the
    baseline `bench/sweep_efficiency.py` compares against). `clinical`: what the final
    ensemble's evaluation fits and measures (refer rule, prediction sets, OOD rate; default
    `ClinicalOptions()`). `search`: `random` or `tpe` (None: `sweep.search.default_search` for
    the budget's trials).

    Every name and value (task, profile, scheduler, each override, the profile's whole space) is
    checked here, on the driver, before Ray starts: a typo fails in a second with the valid names,
    not in a worker once trials run.

    `log` receives the sweep's lines, one line per trial and epoch included; a line identical to
    one already given (the data reloaded for a later stage) is given once, unless verbose.
    """
    log = console.once(log)
    task_record = get_task(task)
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    space_overrides = dict(space_overrides or {})
    check_space(overrides_space(space_overrides), "--set")
    if profile:
        check_space({**get_profile(task, profile).space, **overrides_space(space_overrides)},
                    f"profile {profile} with --set")
    subgroups = subgroup_columns(task_record, data_dir, clinical)
    if clinical is not None:
        clinical = dataclasses.replace(clinical, subgroups=subgroups)
    weights_dir = weights_dir_for(weights_dir)
    if weights_dir is not None:
        space_overrides["weights_dir"] = weights_dir

    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)
    storage = storage_path_for(storage_path)
    experiment = experiment or f"medsweep-{task_record.name}"
    previous = find_resumable(storage, experiment) if resume else None
    budget = {"num_samples": num_samples, "max_epochs": max_epochs,
              "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
              "workers_per_trial": workers_per_trial, "cv_folds": cv_folds, "cv_top": cv_top,
              "replicates": replicates}

    def runner_for(profile_name: str) -> SweepRunner:
        return SweepRunner(task=task, task_record=task_record, data_dir=data_dir,
                           profile=profile_name, budget_overrides=budget, storage=storage,
                           experiment=experiment, tracking_uri=uri, seed=seed,
                           space_overrides=space_overrides or {}, scheduler=scheduler,
                           reuse_actors=reuse_actors, search=search, log=log,
                           subgroups=subgroups)

    # While Ray starts, MLflow's store opens (its tables created, or its migrations checked)
    # and the data are decoded: seconds each on a small machine, and none needs the others.
    # The data to prepare follow from the profile; unnamed, it is the one the Ray about to
    # start will lead to (`choose_profile`), checked once Ray is up.
    expected = local_resources_before_start(address)
    guess = profile or (choose_profile(expected) if expected is not None else None)
    runner = runner_for(guess) if guess else None
    store_opened = in_background(tracking.open_store, uri)
    prepared = (in_background(one_blas_thread(runner.prepare_data)) if runner and not previous
                else None)
    can_grow = connect_ray(address, log)
    store_opened.result()  # an unreachable server fails here, before any trial
    chosen = profile or choose_profile(ray.cluster_resources())
    if runner is None or chosen != guess:
        if prepared is not None:
            prepared.result()  # never two threads writing the same cache
        runner, prepared = runner_for(chosen), None
    runner.check_fits(cluster_can_grow=can_grow)
    searched = (runner.resume(previous) if previous else
                runner.start(prepared.result() if prepared else None))
    built = (final_ensemble(searched.context, runner.budget, log, clinical)
             if ensemble and searched.trained_any else None)
    return runner.finish(searched, built)


def in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a daemon thread: when the foreground fails (Ray unreachable), its error
    is raised at once and the process exits without waiting for this."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 (handed to whoever asks for the result)
            future.set_exception(err)

    threading.Thread(target=run, daemon=True, name=f"medsweep-{fn.__name__}").start()
    return future


def one_blas_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with BLAS (numpy's OpenBLAS) on one thread while it runs: for a job in a thread
    beside a foreground that starts processes (`ray.init`). OpenBLAS's fork handler waits for
    its worker threads and hangs for good when another thread is inside a threaded BLAS call:
    the duplicate screen's matrix product once froze a sweep's start that way
    (`bench/fork_during_blas.py`)."""
    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args)

    return run


def final_ensemble(context: SweepContext, budget: Budget, log: Log,
                   clinical: ClinicalOptions | None = None):
    """The sweep's last stage: the ensemble of its candidates (`orchestrator.ensemble`). Its
    failure is reported, not fatal: the trials stay in MLflow and `python -m
    orchestrator.ensemble` can redo it. `clinical`: what its evaluation fits and measures."""
    console.import_tensorflow()  # the driver's first TensorFlow, quietly unless --verbose
    from orchestrator.ensemble.build import build_ensemble

    try:
        return build_ensemble(context.parent_run_id, tracking_uri=context.tracking_uri,
                              gpus_per_actor=min(budget.gpus_per_trial, 1.0), clinical=clinical,
                              log=log)
    except MedSweepError as err:
        log(f"warning: no ensemble built: {err}")
        return None
