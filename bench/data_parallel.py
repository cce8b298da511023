"""Benchmark of data-parallel training: the seconds of one epoch with 1 worker against 2
workers (`--workers-per-trial 2`) on the same machine, the same config and the same global
batch.

    .venv/bin/python bench/data_parallel.py [--resolution 64] [--batch-size 16] [--epochs 3]

Each run trains the baseline CNN on the brain phantom through `train_trial`, as a sweep's
trial does: 1 worker in one process with every CPU thread, or 2 worker processes under
MultiWorkerMirroredStrategy (`orchestrator/train/distributed.py`), each with its share of the
threads, rank 0's figures reported. The first epoch (tracing) is left out: the median of the
others is printed, per run and as the 2-worker speed-up. Without Ray: Ray's part of a trial's
start is the same for both and not what this measures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _config(args, threads: int) -> dict:
    return {"task": "brain", "backbone": "baseline_cnn", "resolution": args.resolution,
            "epochs": args.epochs, "batch_size": args.batch_size, "schedule": "full",
            "augment": "none", "cpu_threads": threads, "phantom_per_class": args.per_class}


def _worker(args) -> None:
    """One training process; prints its history as JSON."""
    from orchestrator import console

    console.import_tensorflow()
    from orchestrator.train.distributed import multi_worker_strategy
    from orchestrator.train.trial import train_trial

    strategy = multi_worker_strategy if "TF_CONFIG" in os.environ else None
    with tempfile.TemporaryDirectory() as out:
        result = train_trial(_config(args, args.threads), output_dir=out, log=lambda _: None,
                             strategy=strategy)
    print(json.dumps([row["epoch_seconds"] for row in result.history]))


def _run(args, workers: int) -> list[float]:
    from orchestrator.train.distributed import tf_config

    threads = max(1, (os.cpu_count() or 1) // workers)
    ports = []
    for _ in range(workers):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    addresses = [f"127.0.0.1:{port}" for port in ports]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--threads", str(threads),
         *sys.argv[1:]], env={**env, **({"TF_CONFIG": tf_config(addresses, rank)}
                                         if workers > 1 else {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(workers)]
    outputs = [proc.communicate() for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode:
            raise SystemExit(f"a worker failed: {err[-2000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=64, help="phantom images per class")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    print(f"data-parallel epoch time, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()}: {os.cpu_count()} CPU cores, no GPU; baseline_cnn at "
          f"{args.resolution} px, global batch {args.batch_size}, brain phantom "
          f"({args.per_class} per class), epochs 2-{args.epochs}")
    medians = {}
    for workers in (1, 2):
        seconds = _run(args, workers)[1:]
        medians[workers] = statistics.median(seconds)
        print(f"  {workers} worker(s): median epoch {medians[workers]:.2f} s "
              f"({', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"  speed-up with 2 workers: x{medians[1] / medians[2]:.2f}")


if __name__ == "__main__":
    main()
