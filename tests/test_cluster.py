"""Connecting to Ray (orchestrator/cluster.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_without_an_address_a_run_starts_its_own_ray_and_joins_no_other(tmp_path):
    """Another Ray on the machine (a second user's sweep, here a test cluster) is not joined:
    Ray's default would join the latest one started, and lose its objects when that stops.
    The Ray it starts prestarts no idle Python worker and runs its workers with the sweep's
    environment (the console settings, Tune's thread timeout), taken from the driver's."""
    from ray.cluster_utils import Cluster

    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # what the user had: the workers get the sweep's
        code = ("import os, time, ray\nfrom orchestrator.cluster import connect_ray\n"
                "print('grows', connect_ray(None, print))\n"
                "print('gcs', ray.get_runtime_context().gcs_address)\n"
                "time.sleep(1)\n"
                "logs = ray._private.worker._global_node.get_logs_dir_path()\n"
                "raylet = open(os.path.join(logs, 'raylet.out')).read()\n"
                "print('prestarted', raylet.count('Started worker process'))\n"
                "probe = ray.remote(num_cpus=1)(lambda: ' '.join(os.environ.get(k, '-') for k in "
                "('TF_CPP_MIN_LOG_LEVEL', 'TUNE_FUNCTION_THREAD_TIMEOUT_S', 'MEDSWEEP_VERBOSE')))\n"
                "print('worker', ray.get(probe.remote()))\nray.shutdown()\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        assert lines["gcs"] != other.address and lines["grows"] == "False"
        assert lines["prestarted"] == "0"  # no idle worker competing with the data's decoding
        assert lines["worker"] == "3 120 0"  # quiet TensorFlow, Tune's wait, not verbose
        assert "ray: local single-node;" in proc.stdout
        assert "multiple active Ray instances" not in proc.stderr
    finally:
        other.shutdown()
