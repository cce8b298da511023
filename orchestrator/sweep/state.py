"""Where a sweep lives and how one is found again: the storage path (a folder or a URI every
node reaches), the sweep state file beside Tune's own, finding the sweep to resume, and connecting
to Ray. Imports Ray and pyarrow only inside the functions that need them, so a CLI's `--help` and
its argument checks stay fast.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable

from orchestrator.errors import ConfigError

SWEEP_STATE = "medsweep_sweep.json"  # beside Tune's own state: what a resumed sweep continues
RECORDED_DATA = "recorded_data"  # the sweep's manifest, in its folder: what a resume reloads
Log = Callable[[str], None]
# Every Ray worker of a sweep gets these (Ray's runtime_env). A reused trial process
# (`reuse_actors`) first waits for the last trial's thread to end; Tune's default wait, 2 s, is
# shorter than a stopped Keras trial takes to unwind on a loaded CPU, and a wait that runs out
# fails the next trial ("Trainable runner reuse requires reset_config()...").
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}


def storage_path(storage_path: str | None) -> str:
    """Tune wants an absolute path or a URI (s3://, gs://) shared by every node."""
    if storage_path and "://" in storage_path:
        return storage_path
    path = Path(storage_path or "runs/sweeps").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def find_resumable(storage: str, experiment: str) -> str:
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
    return json.loads(_read_bytes(f"{sweep.rstrip('/')}/{SWEEP_STATE}").decode())


def write_sweep_state(sweep: str, state: dict) -> None:
    """Write SWEEP_STATE into the sweep folder `sweep` (a local path or a URI)."""
    _write_bytes(f"{sweep.rstrip('/')}/{SWEEP_STATE}", json.dumps(state, indent=1).encode())


def connect_ray(address: str | None, log: Log) -> bool:
    """`--address`, else RAY_ADDRESS, else a local single-node Ray; fail fast if unreachable.
    Returns whether the cluster may grow (one reached by address; a local Ray never does)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return bool(address) and address != "local"
    if address and address not in ("auto", "local") and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise ConfigError(f"Ray cluster at --address {address} does not answer ({err}); "
                              "start it with `ray start --head` or `ray up cluster.yaml`") from None
    from orchestrator import console

    # every worker, on any node, starts with the driver's console settings (TensorFlow's C++
    # logging and Python warnings off unless --verbose)
    ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
             logging_level="WARNING", configure_logging=True,
             runtime_env={"env_vars": {**WORKER_ENV, **console.worker_env()}})
    sigterm_as_ctrl_c()
    resources = ray.cluster_resources()
    log(f"ray: {'connected to ' + address if address else 'local single-node'}; "
        f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")
    return bool(address) and address != "local"


def sigterm_as_ctrl_c() -> None:
    """Make SIGTERM (`timeout`, `kill`, a batch scheduler) do what Ctrl+C does: Tune saves the
    sweep's state and stops its trials, the CLI says how to resume, Ray shuts down.

    `ray.init` replaces the process's SIGTERM handler (its core worker aborts the driver on one,
    leaving nothing to resume), so this is called after it. Only the main thread may set one."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def _as_ctrl_c(signum, frame) -> None:
    """Whatever SIGINT does now: Tune's handler while a Tuner runs (a graceful stop, then its
    own handler restored, so a second signal interrupts at once), else KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIG_IGN or SIG_DFL: a termination request still ends the sweep
        raise KeyboardInterrupt


def disconnect_ray() -> None:
    """Shut down this driver's Ray (a local one stops with its workers), if it started one."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def save_recorded_data(sweep: str, files: dict[str, Path]) -> None:
    """Copy the data records (manifest and its companions) into the sweep folder (a local
    path or a URI), so that a resumed sweep reloads the very split, wherever it runs."""
    for name, source in files.items():
        _write_bytes(f"{sweep.rstrip('/')}/{RECORDED_DATA}/{name}", Path(source).read_bytes())


def fetch_recorded_data(sweep: str, names: tuple[str, ...], dst: Path) -> Path | None:
    """The recorded files of a sweep copied into `dst` (None when the sweep recorded none)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            (dst / name).write_bytes(_read_bytes(f"{sweep.rstrip('/')}/{RECORDED_DATA}/{name}"))
        except OSError:  # FileNotFoundError included, local or through pyarrow.fs
            return None
    return dst


def _read_bytes(location: str) -> bytes:
    """A file's bytes from a local path or a storage URI (the filesystem Tune uses)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = storage_filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _write_bytes(location: str, data: bytes) -> None:
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)
        return
    fs, path = storage_filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def check_trial_fits(cpus: float, gpus: float, log: Log, *, can_grow: bool) -> None:
    """Refuse, at once, a per-trial request that no node can ever meet: Tune would otherwise
    leave every trial pending forever. A cluster reached by address may have an autoscaler
    that adds such a node (`can_grow`), so there it is said, and the request left as it is;
    the local single-node Ray this process started never grows."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    need = {"CPU": float(cpus), "GPU": float(gpus)}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0) for node in nodes):
        return
    have = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes)
    if can_grow:
        log(f"no node has {cpus:g} CPU and {gpus:g} GPU for one trial yet (nodes: {have}); if "
            "the cluster autoscales, nodes that do are being requested and trials wait for "
            "them; otherwise stop with Ctrl+C and lower --cpus-per-trial/--gpus-per-trial")
        return
    raise ConfigError(f"one trial needs {cpus:g} CPU and {gpus:g} GPU, and no node of this "
                      f"cluster has that (nodes: {have}); lower --cpus-per-trial or "
                      "--gpus-per-trial, or run on a cluster that has such nodes")
