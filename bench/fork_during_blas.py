"""Whether a process can start others while a thread of it runs numpy matrix products: what a
sweep does at its start (`run_sweep` decodes the data, the duplicate screen's products among
it, in a thread while `ray.init` starts Ray's processes).

    .venv/bin/python bench/fork_during_blas.py [--forks 300] [--timeout 30]

Two children, each a thread multiplying 400 x 400 matrices while the main thread starts
`--forks` processes (`subprocess.run` with a `preexec_fn`, which forks as Ray's `Popen` calls
do): once with BLAS threaded as numpy's OpenBLAS is by default, once inside
`runner.one_blas_thread`. A child that has not finished after `--timeout` seconds is hung:
OpenBLAS's fork handler waits for its worker threads while the other thread's call waits for
them too. With one BLAS core there is nothing to race: both rows then finish.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import subprocess, sys, threading, time
import numpy as np
from threadpoolctl import threadpool_info
from orchestrator.sweep.runner import in_background, one_blas_thread

stop = threading.Event()

def products():
    a = np.random.default_rng(0).random((400, 400))
    while not stop.is_set():
        a @ a
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

job = in_background(one_blas_thread(products) if sys.argv[1] == "one" else products)
time.sleep(0.2)
started = time.perf_counter()
for _ in range(int(sys.argv[2])):
    subprocess.run(["true"], preexec_fn=lambda: None)
stop.set()
inside = job.result(timeout=60)
after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(f"{time.perf_counter() - started:.1f}", max(inside), max(after))
"""


def child(mode: str, forks: int, timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(forks)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"HUNG: not done after {time.perf_counter() - started:.0f} s (killed)"
    if proc.returncode != 0:
        return "failed: " + proc.stderr.strip().splitlines()[-1]
    seconds, inside, after = proc.stdout.split()
    return (f"{forks} processes started in {seconds} s; BLAS threads: {inside} in the job, "
            f"{after} after it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores")
    for mode, label in (("threaded", "BLAS threaded (numpy's default)"),
                        ("one", "inside one_blas_thread")):
        print(f"{label:32} {child(mode, args.forks, args.timeout)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
