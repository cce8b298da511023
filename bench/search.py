"""Random search against TPE (Optuna) on the same budget and the same data, over several seeds.

For each seed, two real sweeps (the `cpu` profile's space on the brain phantom, ASHA, no
cross-validation, no ensemble): `--search random` and `--search tpe`, each of `--trials`
trials. Prints per seed and search the best validation score reached and how many trials (in
the order they started) it took to reach 95% of the best score either search found for that
seed; then the medians. A smaller number of trials to 95% and a higher best are better.

TPE draws its first 8 trials at random (`orchestrator.sweep.search.TPE_STARTUP`): on a budget
of 16 it models only the second half, so expect small differences; `--trials 32` shows more.

    .venv/bin/python bench/search.py [--seeds 3] [--trials 16] [--max-epochs 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TO_REACH = 0.95


def sweep(search: str, seed: int, args: argparse.Namespace, workdir: Path) -> list[float]:
    """The sweep's best validation score per trial, in the order the trials started."""
    import ray

    from orchestrator import tracking
    from orchestrator.sweep.runner import run_sweep

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_sweep("brain", profile="cpu", num_samples=args.trials, max_epochs=args.max_epochs,
                       seed=seed, search=search, cv_folds=0, ensemble=False,
                       experiment=f"bench-search-{search}-{seed}",
                       storage_path=str(workdir / f"{search}-{seed}"), tracking_uri=uri,
                       space_overrides={"phantom_per_class": args.per_class},
                       log=lambda _: None)
    ray.shutdown()
    parent = tracking.get_run(uri, result.parent_run_id)
    runs = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id)
    board = result.leaderboard.set_index("trial_id")
    column = f"best_val_{result.metric}"
    ordered = sorted(runs, key=lambda r: r.info.start_time)
    return [float(board.loc[r.data.tags[tracking.TAG_TRIAL_ID], column]) for r in ordered]


def trials_to_reach(scores: list[float], target: float) -> int | None:
    """1-based count of trials until one reaches `target` (None: never)."""
    return next((i + 1 for i, s in enumerate(scores) if s >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    from orchestrator import console

    console.set_verbose(False)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-search-") as tmp:
        for seed in range(args.seeds):
            found = {s: sweep(s, seed, args, Path(tmp)) for s in ("random", "tpe")}
            best = max(max(v) for v in found.values())
            for search, scores in found.items():
                rows.append({"seed": seed, "search": search, "best": max(scores),
                             "to_95": trials_to_reach(scores, TO_REACH * best)})
                print(f"seed {seed} {search:6s} best val accuracy {max(scores):.3f}; trials to "
                      f"95% of the seed's best ({TO_REACH * best:.3f}): "
                      f"{rows[-1]['to_95'] or 'never'}", flush=True)
    print(f"\n{args.seeds} seeds x {args.trials} trials of up to {args.max_epochs} epochs "
          f"(cpu profile space, brain phantom {args.per_class}/class, ASHA), "
          f"{(time.perf_counter() - started) / 60:.1f} min")
    print(f"{'search':8s}{'median best':>12s}{'median trials to 95%':>22s}")
    for search in ("random", "tpe"):
        mine = [r for r in rows if r["search"] == search]
        # a seed that never reached it counts as more than the budget
        to95 = statistics.median(r["to_95"] or float("inf") for r in mine)
        shown = f">{args.trials}" if to95 == float("inf") else f"{to95:.1f}"
        print(f"{search:8s}{statistics.median(r['best'] for r in mine):12.3f}{shown:>22s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
