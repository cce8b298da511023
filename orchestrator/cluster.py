"""This driver's Ray: connecting to a cluster (or starting a local single-node one) with the
console settings every worker inherits, refusing a trial request no node can meet, handling
SIGTERM as Ctrl+C, and shutting down. The sweep and the ensemble CLI both connect here. Imports
Ray only inside the functions that need it, so a CLI's `--help` stays fast.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import threading
from typing import Callable

from orchestrator.errors import ConfigError

Log = Callable[[str], None]
# Every Ray worker of a sweep gets these (the environment of a local Ray's workers, Ray's
# runtime_env on a cluster reached by address). A reused trial process
# (`reuse_actors`) first waits for the last trial's thread to end; Tune's default wait, 2 s, is
# shorter than a stopped Keras trial takes to unwind on a loaded CPU, and a wait that runs out
# fails the next trial ("Trainable runner reuse requires reset_config()...").
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}
# The driver's Tune: per-epoch checkpoints are the point, so its warning about frequent
# snapshots is noise; and its classic console table (the newer engine ignores a
# progress_reporter and shows columns of its own choosing; progress.ProgressTable says which
# ones this one shows).
DRIVER_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
              "RAY_AIR_NEW_OUTPUT": "0"}


PRESTART_OFF = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def set_driver_defaults() -> None:
    """DRIVER_ENV, and WORKER_ENV for a local Ray this process starts afterwards (its workers
    inherit the driver's environment), unless already set. Called where Ray is connected and
    where a Tuner is made, never at import; a caller that starts Ray itself calls it first."""
    for key, value in {**DRIVER_ENV, **WORKER_ENV}.items():
        os.environ.setdefault(key, value)


def connect_ray(address: str | None, log: Log) -> bool:
    """`--address`, else RAY_ADDRESS, else a local single-node Ray; fail fast if unreachable.
    Returns whether the cluster may grow (one reached by address; a local Ray never does)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    set_driver_defaults()
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
    # No address: a Ray of this run's own ("local"). Ray's default would join whichever other
    # Ray on this machine started last (another user's sweep, a test's cluster) and lose its
    # objects when that one stops.
    env = {**WORKER_ENV, **console.worker_env()}
    starts_here = (address or "local") == "local"
    if starts_here:
        # The Ray started here runs its workers with this process's environment: set there,
        # not as a job runtime_env, which costs ray.init about a second and keeps the job's
        # own actors (the TTA pool) off the Python workers Ray prestarts (`bench/ray_start.py`;
        # Tune's trial actors carry a runtime_env of Tune's and never take them).
        os.environ.update(env)
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=True,
             logging_level="WARNING", configure_logging=True,
             runtime_env=None if starts_here else {"env_vars": env},
             # Ray prestarts a Python worker per CPU for tasks that never come: Tune's trial
             # actors carry a runtime_env of Tune's own and start workers of their own. On a
             # small machine those idle starts slow the data's decoding and Ray's own start.
             **({"_system_config": PRESTART_OFF} if starts_here else {}))
    sigterm_as_ctrl_c()
    resources = ray.cluster_resources()
    log(f"ray: {'connected to ' + address if address else 'local single-node'}; "
        f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")
    return bool(address) and address != "local"


def local_resources_before_start(address: str | None) -> dict[str, float] | None:
    """What `connect_ray(address)` will find, known before it runs: the running Ray's
    resources, or, for the local Ray it will start, the GPUs Ray's own detection counts here
    (NVIDIA devices, capped by CUDA_VISIBLE_DEVICES); None for a cluster reached by address or
    when the count cannot be told. The caller checks its guess once Ray is up."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    if (address or os.environ.get("RAY_ADDRESS") or "local") != "local":
        return None
    try:  # Ray's detection, which its raylet runs at start (a private module: may move)
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # noqa: BLE001 (no guess: the data are prepared after Ray starts)
        return None
    return {"GPU": float(min(count, len(visible)) if visible is not None else count)}


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
    """Shut down this driver's Ray (a local one stops with its workers), if it started one.

    Unless --verbose, what workers print while they are being stopped is dropped: everything
    the run had to say was said, and a worker torn down mid-exit can print an abort trace
    (absl's "Mutex corrupt", seen under load) that would read as a failure."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        from orchestrator import console

        if console.verbose():
            sys.modules["ray"].shutdown()
            return
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sys.modules["ray"].shutdown()


def check_trial_fits(cpus: float, gpus: float, log: Log, *, can_grow: bool,
                     workers: int = 1) -> None:
    """Refuse, at once, a per-trial request that no node can ever meet: Tune would otherwise
    leave every trial pending forever. `cpus`, `gpus`: one worker's share when a trial has
    `workers` data-parallel workers (`sweep/parallel.py`), each of which must fit on one node,
    and all of which must fit in the cluster at once. A cluster reached by address may have an
    autoscaler that adds such nodes (`can_grow`), so there it is said, and the request left as
    it is; the local single-node Ray this process started never grows."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    need = {"CPU": float(cpus), "GPU": float(gpus)}
    held = sum(min(int(node.get(k, 0.0) // v) for k, v in need.items() if v > 0)
               for node in nodes)  # how many workers of this size the cluster holds at once
    if held >= workers:
        return
    have = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes)
    asked = (f"{cpus:g} CPU and {gpus:g} GPU" if workers == 1 else
             f"{workers} workers of {cpus:g} CPU and {gpus:g} GPU each (--workers-per-trial "
             f"{workers} shares the trial's CPUs and GPUs among them)")
    if can_grow:
        log(f"the cluster cannot yet hold one trial of {asked} (nodes: {have}); if it "
            "autoscales, nodes that can are being requested and trials wait for them; "
            "otherwise stop with Ctrl+C and lower --cpus-per-trial/--gpus-per-trial")
        return
    raise ConfigError(f"one trial needs {asked}, and this cluster cannot hold that "
                      f"(nodes: {have}); lower --cpus-per-trial or --gpus-per-trial, or run "
                      "on a cluster that has such nodes")
