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
from orchestrator.train.artifacts import TrialData
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


@ray.remote
class _Worker:
    """Worker 1..N-1 of a trial: trains silently; worker 0 reports and checkpoints."""

    def address(self) -> tuple[str, str]:
        return _address(), ray.get_runtime_context().get_node_id()

    def train(self, config: str, cfg: TrialConfig, data: TrialData, checkpoint) -> None:
        os.environ["TF_CONFIG"] = config
        console.import_tensorflow()
        import keras

        keras.backend.clear_session(free_memory=True)  # as worker 0 starts (`trainable.py`)
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
def data_parallel(cfg: TrialConfig, data: TrialData, workers: int,
                  checkpoint) -> Iterator[tuple[Any, list[str]]]:
    """In a trial's process: start its other workers and yield (the strategy worker 0 trains
    under, the node of every worker); one worker: (None, [this node]), nothing started."""
    node = ray.get_runtime_context().get_node_id()
    if workers <= 1:
        yield None, [node]
        return
    group = get_current_placement_group()
    bundle = group.bundle_specs[1]
    others = [_Worker.options(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                              scheduling_strategy=PlacementGroupSchedulingStrategy(
                                  group, placement_group_bundle_index=index)).remote()
              for index in range(1, workers)]
    found = ray.get([w.address.remote() for w in others])
    addresses = [_address(), *(address for address, _ in found)]
    os.environ["TF_CONFIG"] = tf_config(addresses, 0)
    shared = ray.put(data)
    runs = [w.train.remote(tf_config(addresses, rank), cfg, shared, checkpoint)
            for rank, w in enumerate(others, start=1)]
    training = threading.Event()
    training.set()
    threading.Thread(target=_watch, args=(runs, training), daemon=True).start()
    try:
        yield multi_worker_strategy, [node, *(n for _, n in found)]
    finally:
        training.clear()


def _watch(runs: list, training: threading.Event) -> None:
    """End this trial's process if another worker fails while worker 0 still trains."""
    try:
        ray.get(runs)
    except Exception as err:  # noqa: BLE001 (a worker's error or its death)
        if training.is_set():
            lines = [line for line in str(err).splitlines() if "Error" in line]
            cause = lines[-1].strip() if lines else type(err).__name__
            print(f"a data-parallel worker of this trial failed ({cause}); the trial restarts "
                  "from its last checkpoint", flush=True)
            os._exit(1)
