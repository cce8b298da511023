"""Several data-parallel workers per trial (`--workers-per-trial N`): the trial's own process
is worker 0 and trains, reports and checkpoints exactly as a one-worker trial does; workers
1..N-1 are actors on the other bundles of the trial's placement group, each training the same
config on its share of every batch under MultiWorkerMirroredStrategy (`train/distributed.py`).

Tune owns the placement group, so ASHA's stop, a retry and `--resume` free or restore the
whole trial at once: the extra workers are the trial process's own actors and end with it.
A worker that dies ends the trial process too (its peers would otherwise wait in a collective
forever), and Tune retries the trial from its last checkpoint.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import ray
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator import console
from orchestrator.sweep.shared_data import SharedData
from orchestrator.train.config import TrialConfig
from orchestrator.train.distributed import multi_worker_strategy, tf_config
from orchestrator.train.trial import train_trial


def worker_share(cpus: float, gpus: float, workers: int) -> tuple[float, float]:
    """One worker's CPU slots (at least one) and GPUs: the trial's divided by its workers."""
    return max(1.0, cpus / workers), gpus / workers


def trial_resources(cpus: float, gpus: float, workers: int) -> Any:
    """What Tune reserves per trial: the plain request for one worker, else one placement-group
    bundle per worker (packed on as few nodes as hold them)."""
    if workers <= 1:
        return {"cpu": cpus, "gpu": gpus}
    cpu, gpu = worker_share(cpus, gpus, workers)
    return tune.PlacementGroupFactory([{"CPU": cpu, **({"GPU": gpu} if gpu else {})}] * workers)


def _address() -> str:
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"


def worker_name(trial_id: str, rank: int, workers: int) -> str:
    """A worker actor's name in Ray's state (`ray list actors`, the dashboard, its log lines)."""
    return f"medsweep-{trial_id}-worker-{rank}-of-{workers}"


@ray.remote
class TrialWorker:
    """Worker 1..N-1 of a trial: trains silently; worker 0 reports and checkpoints."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:  # how Ray's state and log prefixes show this actor
        return self.name

    def address(self) -> tuple[str, str]:
        return _address(), ray.get_runtime_context().get_node_id()

    def train(self, config: str, cfg: TrialConfig, shared: SharedData, checkpoint) -> None:
        os.environ["TF_CONFIG"] = config
        console.import_tensorflow()
        import keras

        keras.backend.clear_session(free_memory=True)  # as worker 0 starts (`trainable.py`)
        data = shared.trial_data(cfg)  # the object store's one copy, mapped, not copied
        output_dir = tempfile.mkdtemp(prefix="medsweep-worker-")
        try:
            if checkpoint is None:
                train_trial(cfg, data, output_dir=output_dir, log=_silent,
                            strategy=multi_worker_strategy)
                return
            with checkpoint.as_directory() as resume_from:
                train_trial(cfg, data, output_dir=output_dir, resume_from=resume_from,
                            log=_silent, strategy=multi_worker_strategy)
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)


def _silent(line: str) -> None:
    """Worker 0 says everything the trial has to say."""


@contextmanager
def data_parallel(cfg: TrialConfig, shared: SharedData, workers: int,
                  checkpoint) -> Iterator[tuple[Any, list[str]]]:
    """In a trial's process: start its other workers and yield (the strategy worker 0 trains
    under, the node of every worker); one worker: (None, [this node]), nothing started.
    Each worker reads the trial's arrays from `shared` itself: nothing is put again."""
    node = ray.get_runtime_context().get_node_id()
    if workers <= 1:
        yield None, [node]
        return
    group = get_current_placement_group()
    bundle = group.bundle_specs[1]
    trial_id = tune.get_context().get_trial_id()
    # Named for Ray's state; the process id keeps a retried attempt's names apart from those
    # of the attempt it replaces, which Ray may not have released yet.
    others = [TrialWorker.options(
        name=f"{worker_name(trial_id, rank, workers)}-{os.getpid()}",
        num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=rank)).remote(worker_name(trial_id, rank, workers))
        for rank in range(1, workers)]
    found = ray.get([w.address.remote() for w in others])
    addresses = [_address(), *(address for address, _ in found)]
    os.environ["TF_CONFIG"] = tf_config(addresses, 0)
    # A test's injected fault (`fail_at_epoch`) is the trial's: worker 0 raises it, once.
    peers_cfg = cfg.replace(fail_at_epoch=0)
    runs = [w.train.remote(tf_config(addresses, rank), peers_cfg, shared, checkpoint)
            for rank, w in enumerate(others, start=1)]
    ended = threading.Event()
    threading.Thread(target=_watch, args=(runs, ended), daemon=True).start()
    try:
        yield multi_worker_strategy, [node, *(n for _, n in found)]
    finally:
        ended.set()


PEER_GRACE_S = 10.0  # after a peer fails: time for worker 0 to store the epoch it finished


def _watch(runs: list, ended: threading.Event) -> None:
    """End this trial's process if another worker fails while worker 0 still trains: worker 0
    would wait for it in its next collective forever. Not at once: a peer failing as an epoch
    ends leaves worker 0 reporting that epoch's checkpoint, which then is not lost."""
    try:
        ray.get(runs)
    except Exception as err:  # noqa: BLE001 (a worker's error or its death)
        if not ended.wait(PEER_GRACE_S):
            lines = [line for line in str(err).splitlines() if "Error" in line]
            cause = lines[-1].strip() if lines else type(err).__name__
            print(f"a data-parallel worker of this trial failed ({cause}); the trial restarts "
                  "from its last checkpoint", flush=True)
            os._exit(1)
