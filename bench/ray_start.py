"""How long a sweep waits for Ray before its first trial can run: `connect_ray` starting a local
Ray, then two 1-CPU actors (what Tune's first two trial processes are) answering, N times.

    .venv/bin/python bench/ray_start.py [--runs 3] [--runtime-env]

`--runtime-env` passes the workers' environment as a job runtime_env, as the sweep did before
a local Ray's workers took it from the driver's environment: Ray then sets that environment up
at `ray.init`, and starts workers of its own for the job's actors instead of taking the ones it
prestarts (`docs/benchmarks.md`). Tune's trial actors carry a runtime_env of Tune's own, so they
never take a prestarted worker either way; the TTA pool's actors do.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def once(runtime_env: bool) -> tuple[float, float]:
    """(seconds to connect_ray, seconds until two actors answer), in this process."""
    import ray

    from orchestrator import cluster, console

    started = time.perf_counter()
    if runtime_env:  # the earlier way, for comparison: every worker from a runtime_env
        cluster.set_driver_defaults()
        ray.init(address="local", include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {**cluster.WORKER_ENV, **console.worker_env()}})
    else:
        cluster.connect_ray(None, lambda _: None)
    connected = time.perf_counter()

    @ray.remote(num_cpus=1)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    probes = [Probe.remote() for _ in range(2)]
    ray.get([p.pid.remote() for p in probes])
    ready = time.perf_counter()
    ray.shutdown()
    return connected - started, ready - connected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runtime-env", action="store_true")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(*once(args.runtime_env))
        return
    rows = []
    for _ in range(args.runs):  # a fresh process each: nothing of Ray imported or started
        out = subprocess.run([sys.executable, __file__, "--once"]
                             + (["--runtime-env"] if args.runtime_env else []),
                             capture_output=True, text=True, check=True).stdout
        rows.append(tuple(map(float, out.split()[-2:])))
    how = "runtime_env" if args.runtime_env else "the driver's environment"
    print(f"local Ray, workers' environment from {how}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    for i, (connect, actors) in enumerate(rows, 1):
        print(f"  run {i}: connect_ray {connect:.2f} s, two actors ready {actors:.2f} s")
    print(f"  median: connect_ray {statistics.median(r[0] for r in rows):.2f} s, two actors "
          f"ready {statistics.median(r[1] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
