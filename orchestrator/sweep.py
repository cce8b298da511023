"""`python -m orchestrator.sweep TASK`: a Ray Tune sweep over backbones, resolutions and
unfreezing schedules, stopped early by ASHA, tracked in MLflow, resumable.

`run_sweep(...)` is the API; the CLI is a thin argparse layer over it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from orchestrator.errors import ConfigError, MedSweepError, SweepInterrupted

SCHEDULERS = ("asha", "fifo")
SWEEP_STATE = "medsweep_sweep.json"  # beside Tune's own state: what a resumed sweep continues
Log = Callable[[str], None]


@dataclass
class SweepResult:
    parent_run_id: str
    experiment_path: str
    tracking_uri: str
    metric: str
    mode: str
    leaderboard: pd.DataFrame  # one row per trial, best first
    ui_command: str
    ensemble: Any = None  # orchestrator.ensemble.build.EnsembleReport, when one was built


def run_sweep(
    task: str,
    *,
    data_dir: str | None = None,
    profile: str | None = None,
    num_samples: int | None = None,
    max_epochs: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
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
    log: Log = print,
) -> SweepResult:
    """Run (or resume) one sweep and return its leaderboard; see `--help` for each argument.

    `space_overrides` fixes search-space keys to constants (tests use it to inject a fault).
    `weights_dir` (else $MEDSWEEP_WEIGHTS_DIR read here, on the driver) becomes the constant
    `weights_dir` of every trial: workers on other nodes do not inherit the driver's environment.
    """
    from tasks import get_task

    from orchestrator import tracking
    from search_spaces import get_profile

    task_record = get_task(task)  # unknown task or profile: fail before Ray starts
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    if profile:
        get_profile(task, profile)
    weights_dir = _weights_dir(weights_dir)
    if weights_dir is not None:
        space_overrides = {**(space_overrides or {}), "weights_dir": weights_dir}

    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)
    storage = _storage_path(storage_path)
    experiment = experiment or f"medsweep-{task_record.name}"
    previous = _find_resumable(storage, experiment) if resume else None
    connect_ray(address, log)
    from orchestrator.sweep_runner import SweepRunner

    runner = SweepRunner(task=task, task_record=task_record, data_dir=data_dir, profile=profile,
                         num_samples=num_samples, max_epochs=max_epochs,
                         cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                         storage=storage, experiment=experiment, tracking_uri=uri, seed=seed,
                         space_overrides=space_overrides or {}, scheduler=scheduler,
                         build_ensemble=ensemble, log=log)
    return runner.resume(previous) if previous else runner.start()


def _weights_dir(weights_dir: str | os.PathLike | None) -> str | None:
    """The absolute weights folder every trial reads, or None (each node's own lookup)."""
    env = "MEDSWEEP_WEIGHTS_DIR"  # models.WEIGHTS_DIR_ENV; importing models loads TensorFlow
    source = "--weights-dir"
    if weights_dir is None or str(weights_dir) == "":
        weights_dir, source = os.environ.get(env) or None, f"${env}"
    if weights_dir is None:
        return None
    path = Path(weights_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"weights directory {path} (from {source}) does not exist; fetch the "
                          f"files with: python -m orchestrator.weights fetch {path}")
    return str(path)


def _storage_path(storage_path: str | None) -> str:
    """Tune wants an absolute path or a URI (s3://, gs://) shared by every node."""
    if storage_path and "://" in storage_path:
        return storage_path
    path = Path(storage_path or "runs/sweeps").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _find_resumable(storage: str, experiment: str) -> str:
    """The newest sweep of this experiment under the storage path (a folder or a URI): the path
    or URI of its folder, the one `Tuner.restore` takes."""
    if is_uri(storage):
        found = _newest_remote_sweep(storage, experiment)
    else:
        candidates = sorted(Path(storage).glob(f"{experiment}-*/{SWEEP_STATE}"),
                            key=lambda p: p.stat().st_mtime)
        found = str(candidates[-1].parent) if candidates else None
    if found is None:
        raise ConfigError(f"--resume: nothing to resume for experiment {experiment!r} under "
                          f"{storage} (looked for {experiment}-*/{SWEEP_STATE})")
    return found


def _newest_remote_sweep(storage: str, experiment: str) -> str | None:
    """`{storage}/{experiment}-*/medsweep_sweep.json` listed through pyarrow.fs (what Tune itself
    uses for URIs); newest by the state file's mtime where the filesystem gives one, else by the
    `%Y%m%d-%H%M%S` stamp in the folder name."""
    import pyarrow.fs

    fs, root = storage_filesystem(storage)
    try:
        folders = [info for info in fs.get_file_info(
                       pyarrow.fs.FileSelector(root.rstrip("/") or "/", allow_not_found=True))
                   if info.type == pyarrow.fs.FileType.Directory
                   and info.base_name.startswith(f"{experiment}-")]
        states = fs.get_file_info([f"{info.path}/{SWEEP_STATE}" for info in folders])
    except OSError as err:
        raise ConfigError(f"--resume: cannot list --storage-path {storage} ({err})") from None
    found = [(_sweep_age(folder.base_name, experiment, state), folder.base_name)
             for folder, state in zip(folders, states) if state.type == pyarrow.fs.FileType.File]
    return f"{storage.rstrip('/')}/{max(found)[1]}" if found else None


def _sweep_age(name: str, experiment: str, state) -> float:
    if state.mtime is not None:
        return state.mtime.timestamp()
    try:
        return datetime.strptime(name[len(experiment) + 1:], "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        return float("-inf")


def is_uri(path: str) -> bool:
    """A storage path like s3://bucket/prefix or file:///abs/path, as opposed to a folder."""
    return "://" in path


def storage_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a storage URI, as Tune resolves it."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"--storage-path {uri}: pyarrow.fs cannot open it ({err})") from None


def read_sweep_state(sweep: str) -> dict:
    """The SWEEP_STATE of the sweep folder `sweep` (a local path or a URI)."""
    if not is_uri(sweep):
        return json.loads((Path(sweep) / SWEEP_STATE).read_text())
    fs, path = storage_filesystem(sweep)
    with fs.open_input_stream(f"{path.rstrip('/')}/{SWEEP_STATE}") as stream:
        return json.loads(stream.read().decode())


def connect_ray(address: str | None, log: Log) -> None:
    """`--address`, else RAY_ADDRESS, else a local single-node Ray; fail fast if unreachable."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return
    if address and address not in ("auto", "local") and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise ConfigError(f"Ray cluster at --address {address} does not answer ({err}); "
                              "start it with `ray start --head` or `ray up cluster.yaml`") from None
    ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
             logging_level="WARNING", configure_logging=True)
    resources = ray.cluster_resources()
    log(f"ray: {'connected to ' + address if address else 'local single-node'}; "
        f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from tasks import task_names

    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Sweep backbones, resolutions and unfreezing schedules for a medical image "
        "task with Ray Tune (ASHA early stopping) and record every trial in MLflow. Without "
        "--data-dir it runs on the task's SYNTHETIC phantom, never on medical data.")
    p.add_argument("task", help=f"one of {', '.join(task_names())} (or name/variant, e.g. "
                   "brain/4class)")
    p.add_argument("--data-dir", help="the data set in its real layout (docs/data.md); "
                   "omitted: the synthetic phantom")
    p.add_argument("--profile", help="smoke | cpu | gpu (default: gpu when the cluster has "
                   "GPUs, else cpu)")
    p.add_argument("--num-samples", type=int, help="trials to sample (default: the profile's)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial, ASHA's max_t "
                   "(default: the profile's)")
    p.add_argument("--cpus-per-trial", type=float, help="CPU slots per trial; TensorFlow in "
                   "the trial uses that many threads (default: the profile's)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; a fraction (0.5) "
                   "packs trials on one GPU and caps each trial's TensorFlow memory to match")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else a local "
                   "single-node Ray)")
    p.add_argument("--storage-path", help="where trial checkpoints go: a local folder "
                   "(default runs/sweeps) or a URI every node reaches (s3://bucket/path)")
    p.add_argument("--experiment", help="MLflow experiment and sweep folder name "
                   "(default medsweep-TASK)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow/mlflow.db in the working directory)")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted "
                   "sweep of this experiment: finished trials stay, unfinished ones resume "
                   "from their last checkpoint, no MLflow run is duplicated")
    p.add_argument("--seed", type=int, default=0, help="search seed: the same seed samples "
                   "the same configs (default %(default)s)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the final TTA ensemble "
                   "(build it later with python -m orchestrator.ensemble --sweep-run ID)")
    p.add_argument("--scheduler", default="asha", choices=SCHEDULERS, help="asha stops "
                   "trailing trials early; fifo runs all to the end (default %(default)s)")
    p.add_argument("--weights-dir", help="folder holding the ImageNet weight files (python -m "
                   "orchestrator.weights fetch DIR), at the same path on every node (else "
                   "MEDSWEEP_WEIGHTS_DIR on this machine, else each node's Keras cache)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        result = run_sweep(args.task, data_dir=args.data_dir, profile=args.profile,
                           num_samples=args.num_samples, max_epochs=args.max_epochs,
                           cpus_per_trial=args.cpus_per_trial,
                           gpus_per_trial=args.gpus_per_trial, address=args.address,
                           storage_path=args.storage_path, experiment=args.experiment,
                           tracking_uri=args.tracking_uri, resume=args.resume, seed=args.seed,
                           scheduler=args.scheduler, ensemble=not args.no_ensemble,
                           weights_dir=args.weights_dir)
    except SweepInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_summary(result, time.perf_counter() - started)
    return 0


def _print_summary(result: SweepResult, seconds: float) -> None:
    board = result.leaderboard
    print("\n" + "=" * 78)
    print(f"sweep finished in {seconds / 60:.1f} min: {len(board)} trials, best first "
          f"(val {result.metric}, {result.mode})")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(board.head(10).to_string(index=False))
    print(f"\nMLflow parent run: {result.parent_run_id}  (tracking URI {result.tracking_uri})")
    print(f"open the MLflow UI: {result.ui_command}")
    print(f"checkpoints: {result.experiment_path}")
    print("=" * 78)
    if result.ensemble is not None:
        from orchestrator.ensemble.build import print_report

        print_report(result.ensemble)


if __name__ == "__main__":
    sys.exit(main())
