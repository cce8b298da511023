"""Data-parallel trials (`--workers-per-trial`): Keras 3 under MultiWorkerMirroredStrategy
trains two processes exactly as one; a sweep's trial runs on two workers (on two nodes, named
in Ray's state), reports once per epoch, and resumes after a worker is killed, on a real Ray
and MLflow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray

from orchestrator import tracking
from orchestrator.sweep.budget import Budget
from orchestrator.sweep.parallel import trial_resources, worker_name, worker_share
from orchestrator.sweep.runner import run_sweep
from orchestrator.train.distributed import tf_config
from search_spaces import get_profile

ROOT = Path(__file__).resolve().parents[1]

_TRAIN = textwrap.dedent("""
    import os, sys
    import numpy as np, keras
    from orchestrator.train.distributed import multi_worker_strategy
    rng = np.random.default_rng(0)
    x = rng.random((42, 8)).astype("float32"); y = (x.sum(1) > 4).astype("int32")
    import tensorflow as tf
    with multi_worker_strategy().scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
        probs = model.predict(x, verbose=0)
    np.savez(sys.argv[1], *model.get_weights(), probs=probs)
""")


def test_each_worker_takes_its_share_of_the_trial():
    assert worker_share(4, 2, 2) == (2.0, 1.0)
    assert worker_share(1, 0, 2) == (1.0, 0.0)  # at least one CPU slot each
    assert trial_resources(2, 1, 1) == {"cpu": 2, "gpu": 1}  # one worker: today's request
    assert trial_resources(2, 0, 2).bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
    profile = get_profile("brain", "smoke")
    assert Budget.of(profile, {}).workers_per_trial == 1
    assert Budget.of(profile, {"workers_per_trial": 2}).applied(profile).name == "smoke"
    with pytest.raises(ValueError, match="--workers-per-trial 0"):
        Budget.of(profile, {"workers_per_trial": 0})


class RayStateWatcher:
    """Polls Ray's state (its named actors, in every namespace) while a sweep runs; `kill`, if
    given, is called once on the first actor whose name starts with it, after the sweep's
    storage holds `after` checkpoints."""

    def __init__(self, kill: str = "", storage: Path | None = None, after: int = 1) -> None:
        self.seen: set[str] = set()
        self.killed: list[str] = []
        self._kill, self._storage, self._after = kill, storage, after
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self._running.is_set():
            if ray.is_initialized():
                actors = ray.util.list_named_actors(all_namespaces=True)
                self.seen.update(a["name"] for a in actors)
                if self._kill and not self.killed and self._checkpoints() >= self._after:
                    for actor in actors:
                        if actor["name"].startswith(self._kill):
                            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
                            self.killed.append(actor["name"])
                            break
            time.sleep(0.3)

    def _checkpoints(self) -> int:
        return len(list(self._storage.rglob("checkpoint_0*"))) if self._storage else 0

    def named(self, prefix: str) -> set[str]:
        return {n for n in self.seen if n.startswith(prefix)}

    def stop(self) -> None:
        self._running.clear()
        self._thread.join()


@pytest.mark.slow
def test_two_workers_train_exactly_as_one(tmp_path):
    """The same global batch split over two processes: the same weights and predictions as
    one process (Keras 3's `fit` fails here without `multi_worker_strategy`'s reduce)."""
    import socket

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    addresses = [f"127.0.0.1:{p}" for p in ports]
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN, str(tmp_path / f"w{i}.npz")],
                              env={**env, "TF_CONFIG": tf_config(addresses, i)},
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    procs.append(subprocess.Popen([sys.executable, "-c", _TRAIN, str(tmp_path / "one.npz")],
                                  env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-2000:]
    one, w0, w1 = (np.load(tmp_path / f"{n}.npz") for n in ("one", "w0", "w1"))
    assert w0["probs"].shape == (42, 2)  # every row predicted, in order, on each worker
    for key in one.files:
        np.testing.assert_allclose(w0[key], one[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(w0[key], w1[key])


@pytest.mark.slow
def test_a_two_worker_trial_spans_two_nodes_reports_once_per_epoch_and_resumes(tmp_path,
                                                                               own_ray):
    """One trial of two workers on two one-CPU nodes. Worker 1 is killed (`ray.kill`) once
    epoch 1's checkpoint is stored: worker 0 must not wait in the collective forever; Tune
    retries the trial from its checkpoint, on two workers again, and it completes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    watcher = RayStateWatcher(kill="medsweep-", storage=tmp_path / "runs")
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        result = run_sweep("brain", profile="smoke", num_samples=1, max_epochs=3, cv_folds=0,
                           workers_per_trial=2, address=cluster.address,
                           storage_path=str(tmp_path / "runs"), tracking_uri=uri,
                           ensemble=False, log=lambda _: None)
    finally:
        watcher.stop()
        ray.shutdown()
        cluster.shutdown()
    assert watcher.killed, "no worker was killed: the test proved nothing"
    board = result.leaderboard
    assert len(board) == 1 and board.loc[0, "status"] == "completed" and board.loc[0, "epochs"] == 3
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(result.parent_run_id)
    (child,) = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id)
    assert parent.data.params["workers_per_trial"] == "2"
    assert child.data.params["workers_per_trial"] == "2"
    workers = watcher.named(worker_name(tracking.tune_trial_id(child), 1, 2))
    assert len(workers) == 2, watcher.seen  # worker 1 of 2 in Ray's state, once per attempt
    nodes = child.data.tags[tracking.TAG_NODE].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2  # one worker on each node
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
    # once per epoch, not per worker; resumed, not started over: epoch 1 never trained again
    assert sorted(set(steps)) == [1, 2, 3] and steps.count(1) == 1, steps
    import keras

    from orchestrator.models.classifier import build_model
    from tasks import get_task

    best = keras.models.load_model(Path(child.data.tags[tracking.TAG_CHECKPOINT]) / "best.keras")
    config = json.loads(json.dumps(child.data.params))
    alone = build_model(config["backbone"], get_task("brain").num_classes,
                        int(config["resolution"]), weights="none")
    assert [w.shape for w in best.get_weights()] == [w.shape for w in alone.get_weights()]
