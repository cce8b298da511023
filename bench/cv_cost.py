"""The wall-time cost of cross-validating the finalists: the brain `cpu` profile (the embedded
default of `make demo`), ensemble included, with `--cv-folds 0` and with 3, in one run.

Prints, for each: search trials, fold trials, wall time of the sweep plus its ensemble, the
number of held-out predictions each candidate was chosen on, the ensemble's members and its
test accuracy.

    .venv/bin/python bench/cv_cost.py [--folds 3] [--top 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(folds: int, top: int, workdir: Path) -> dict:
    import ray

    from orchestrator.sweep.runner import run_sweep

    started = time.perf_counter()
    result = run_sweep("brain", profile="cpu", cv_folds=folds, cv_top=top, seed=0,
                       storage_path=str(workdir / f"cv{folds}"),
                       tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", log=lambda _: None)
    wall = time.perf_counter() - started
    ray.shutdown()
    report = result.ensemble
    row = report.table.set_index("model").loc["ensemble"]
    return {"cv_folds": folds, "search_trials": len(result.leaderboard),
            "fold_trials": folds * top if folds else 0, "wall_s": round(wall, 1),
            "chosen_on": report.chosen_on, "held_out_images": report.held_out_images,
            "members": len(report.members),
            "test_accuracy": round(float(row["test_accuracy"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--top", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="medsweep-bench-cv-") as tmp:
        rows = [run(folds, args.top, Path(tmp)) for folds in (0, args.folds)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    base, cv = rows
    print(f"cross-validation costs {cv['wall_s'] / base['wall_s']:.2f}x the holdout sweep's "
          f"wall time ({cv['wall_s'] - base['wall_s']:.0f} s more on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
