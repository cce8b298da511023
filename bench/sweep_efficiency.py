"""ASHA vs FIFO on the same search space, and Ray/Tune orchestration overhead with and without
reused trial processes (Tune's `reuse_actors`).

Prints, for each run (FIFO and ASHA with reused actors, the default; ASHA with a fresh process per
trial): trials, epochs consumed, best validation metric, wall time, the sum of the trials' own
training times and the overhead (wall time / (trial time / parallel slots)). Runs on the brain
phantom; the space is the `cpu` profile, shortened to fit a few minutes.

    .venv/bin/python bench/sweep_efficiency.py [--num-samples 8] [--max-epochs 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(scheduler: str, reuse: bool, args: argparse.Namespace, workdir: Path) -> dict:
    import ray

    from orchestrator.sweep.runner import run_sweep

    started = time.perf_counter()
    result = run_sweep("brain", profile="cpu", num_samples=args.num_samples,
                       max_epochs=args.max_epochs, scheduler=scheduler, seed=args.seed,
                       cv_folds=0,  # the search alone: ASHA against FIFO
                       storage_path=str(workdir / f"{scheduler}-{reuse}"),
                       reuse_actors=reuse,
                       tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                       space_overrides={"resolution": args.resolution,
                                        "phantom_per_class": args.per_class},
                       ensemble=False, log=lambda _: None)
    wall = time.perf_counter() - started
    slots = ray.cluster_resources().get("CPU", 1)
    ray.shutdown()
    board = result.leaderboard
    trial_seconds = float(board["seconds"].sum())
    return {"scheduler": scheduler, "reuse": reuse, "trials": len(board),
            "epochs": int(board["epochs"].sum()),
            "best": float(board.iloc[0, 1]), "wall_s": wall, "trial_s": trial_seconds,
            "overhead": wall / (trial_seconds / slots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-") as tmp:
        rows = [run(s, reuse, args, Path(tmp))
                for s, reuse in (("fifo", True), ("asha", True), ("asha", False))]
    print(f"\nbrain phantom, cpu profile space, {args.num_samples} samples x "
          f"{args.max_epochs} epochs at {args.resolution} px, seed {args.seed}, "
          f"{os.cpu_count()} cores")
    print(f"{'scheduler':<10}{'reuse actors':>13}{'trials':>7}{'epochs':>8}{'best val acc':>14}"
          f"{'wall s':>9}{'sum trial s':>13}{'overhead':>10}")
    for r in rows:
        print(f"{r['scheduler']:<10}{'yes' if r['reuse'] else 'no':>13}{r['trials']:>7}"
              f"{r['epochs']:>8}{r['best']:>14.3f}{r['wall_s']:>9.1f}{r['trial_s']:>13.1f}{r['overhead']:>9.2f}x")
    fifo, asha, fresh = rows
    print(f"ASHA used {asha['epochs'] / fifo['epochs']:.0%} of FIFO's epochs; best metric "
          f"{asha['best']:.3f} vs {fifo['best']:.3f}")
    print(f"ASHA with reused actors: {asha['wall_s']:.1f} s wall, overhead "
          f"{asha['overhead']:.2f}x; with a fresh process per trial: {fresh['wall_s']:.1f} s, "
          f"{fresh['overhead']:.2f}x")


if __name__ == "__main__":
    main()
