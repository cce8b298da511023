"""Connecting to Ray (orchestrator/cluster.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_without_an_address_a_run_starts_its_own_ray_and_joins_no_other(tmp_path):
    """Another Ray on the machine (a second user's sweep, here a test cluster) is not joined:
    Ray's default would join the latest one started, and lose its objects when that stops."""
    from ray.cluster_utils import Cluster

    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        code = ("import ray\nfrom orchestrator.cluster import connect_ray\n"
                "print('grows', connect_ray(None, print))\n"
                "print('gcs', ray.get_runtime_context().gcs_address)\nray.shutdown()\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        assert lines["gcs"] != other.address and lines["grows"] == "False"
        assert "ray: local single-node;" in proc.stdout
        assert "multiple active Ray instances" not in proc.stderr
    finally:
        other.shutdown()
