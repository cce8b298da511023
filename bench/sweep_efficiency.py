"""ASHA vs FIFO on the same search space, and Ray/Tune orchestration overhead with and without
reused trial processes (Tune's `reuse_actors`).

Prints, for each run (FIFO and ASHA with reused actors, the default; ASHA with a fresh process per
trial): trials, epochs consumed, best validation metric, wall time, the sum of the trials' own
training times and the overhead (wall time / (trial time / parallel slots)); then the part paid
once per sweep before the first trial starts (Ray, the data, MLflow's parent run, the first
trial processes), the overhead within the trials' span alone, and the idle slots within it:
between trials (switch) and once no trial is left to start (tail). Runs on the brain
phantom; the space is the `cpu` profile, shortened to fit a few minutes.

`--whole N` instead runs the whole `cpu` sweep as `make demo` runs it (the search with ASHA
and the cross-validation of its finalists, one Tune experiment; the final ensemble left out, as
it trains no trial)
N times, and prints each run's overhead over both stages, where the rest went, and how many runs
were at or below 1.15x.

    .venv/bin/python bench/sweep_efficiency.py [--num-samples 8] [--max-epochs 8]
    .venv/bin/python bench/sweep_efficiency.py --whole 4 [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(scheduler: str, reuse: bool, args: argparse.Namespace, workdir: Path) -> dict:
    import ray

    from orchestrator.sweep.runner import run_sweep

    from orchestrator import tracking

    started, started_at = time.perf_counter(), time.time()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_sweep("brain", profile="cpu", num_samples=args.num_samples,
                       max_epochs=args.max_epochs, scheduler=scheduler, seed=args.seed,
                       cv_folds=0,  # the search alone: ASHA against FIFO
                       storage_path=str(workdir / f"{scheduler}-{reuse}"),
                       reuse_actors=reuse,
                       tracking_uri=uri,
                       space_overrides={"resolution": args.resolution,
                                        "phantom_per_class": args.per_class},
                       ensemble=False, log=lambda _: None)
    wall = time.perf_counter() - started
    slots = ray.cluster_resources().get("CPU", 1)
    ray.shutdown()
    board = result.leaderboard
    trial_seconds = float(board["seconds"].sum())
    # The trials' span (first trial run opened to last closed, from MLflow): what is left of
    # the wall time outside it is paid once per sweep (Ray, the data, the first processes;
    # the summary and shutdown), inside it once per trial.
    parent = tracking.get_run(uri, result.parent_run_id)
    runs = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id)
    spans = [(r.info.start_time / 1000.0, (r.info.end_time or r.info.start_time) / 1000.0)
             for r in runs]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    switch, tail = idle_slot_seconds(spans, slots)
    return {"scheduler": scheduler, "reuse": reuse, "trials": len(board),
            "epochs": int(board["epochs"].sum()),
            "best": float(board.iloc[0, 1]), "wall_s": wall, "trial_s": trial_seconds,
            "overhead": wall / (trial_seconds / slots), "start_s": first - started_at,
            "span_s": last - first, "span_overhead": (last - first) / (trial_seconds / slots),
            "switch_s": switch, "tail_s": tail,
            "no_tail_overhead": (wall - tail) / (trial_seconds / slots)}


TARGET = 1.15  # the whole sweep's overhead to stay at or below


def run_whole(args: argparse.Namespace, workdir: Path) -> dict:
    """The `cpu` profile's search and cross-validation, as `make demo` runs them (no ensemble):
    wall time from the call to the last fold trial's end; trial time from Tune's
    `time_total_s` of every search and fold trial."""
    import ray

    from orchestrator import tracking
    from orchestrator.sweep.runner import run_sweep

    started, started_at = time.perf_counter(), time.time()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    path = args.log

    def log(line: str) -> None:  # the sweep's lines, timed; Tune pickles it: no open file
        if path:
            with open(path, "a") as lines:
                lines.write(f"{time.perf_counter() - started:7.1f} {line}\n")

    result = run_sweep("brain", profile="cpu", seed=args.seed, storage_path=str(workdir),
                       tracking_uri=uri, ensemble=False, log=log)
    wall = time.perf_counter() - started
    slots = ray.cluster_resources().get("CPU", 1)
    ray.shutdown()
    parent = tracking.get_run(uri, result.parent_run_id)
    stages = {}
    for stage, kind in (("search", tracking.KIND_TRIAL), ("cv", tracking.KIND_CV_TRIAL)):
        runs = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id,
                                        kind=kind)
        stages[stage] = sorted((r.info.start_time / 1000.0,
                                (r.info.end_time or r.info.start_time) / 1000.0) for r in runs)
    # every trial of both stages (one Tune experiment): its seconds at its end
    trial_s = sum(last_result(p)["time_total_s"]
                  for p in Path(result.experiment_path).glob("*/result.json"))
    search, cv = stages["search"], stages["cv"]
    switch, tail = idle_slot_seconds(search + cv, slots)
    search_end = max(b for _, b in search)
    return {"trials": f"{len(search)}+{len(cv)}", "wall_s": wall, "trial_s": trial_s,
            "overhead": wall / (trial_s / slots), "start_s": search[0][0] - started_at,
            "switch_s": switch, "tail_s": tail,
            "overlap_s": (search_end - cv[0][0]) if cv else 0.0,
            "end_s": started_at + wall - max(b for _, b in search + cv)}


def last_result(path: Path) -> dict:
    """The last line of a Tune trial's result.json: its totals at its end."""
    lines = path.read_text().strip().splitlines()
    return json.loads(lines[-1])


def print_whole(rows: list[dict], args: argparse.Namespace, loads: list[str]) -> None:
    print(f"\nthe whole cpu sweep (brain phantom, search + cross-validation, no ensemble), "
          f"seed {args.seed}, {os.cpu_count()} cores")
    print(f"{'run':>4}{'trials':>8}{'wall s':>9}{'sum trial s':>13}{'overhead':>10}"
          f"{'start s':>9}{'switch s':>10}{'tail s':>8}{'overlap s':>11}{'end s':>7}  load")
    for i, (r, load) in enumerate(zip(rows, loads), 1):
        print(f"{i:>4}{r['trials']:>8}{r['wall_s']:>9.1f}{r['trial_s']:>13.1f}"
              f"{r['overhead']:>9.3f}x{r['start_s']:>9.1f}{r['switch_s']:>10.1f}"
              f"{r['tail_s']:>8.1f}{r['overlap_s']:>11.1f}{r['end_s']:>7.1f}  {load}")
    good = sum(1 for r in rows if r["overhead"] <= TARGET)
    print(f"{good} of {len(rows)} runs at or below {TARGET:.2f}x. start: before the first "
          "search trial opens; switch and tail: idle slots (before the last trial opens, and "
          "after); overlap: how long fold trials ran before the search's last trial ended; "
          "end: after the last trial")


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: the machine is shared."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def idle_slot_seconds(spans: list[tuple[float, float]], slots: float) -> tuple[float, float]:
    """Wall seconds lost to slots without a trial, from the trial runs' open and close times:
    before the last trial opens (a slot waiting between one trial and the next: the
    orchestrator's cost) and after (the tail: no trial is left to start, so the last ones run
    alone whatever the orchestrator does). Each is idle slot-seconds / slots."""
    last_open = max(a for a, _ in spans)
    edges = sorted({t for span in spans for t in span})
    switch = tail = 0.0
    for a, b in zip(edges, edges[1:]):
        running = sum(1 for s, e in spans if s <= a and e >= b)
        idle = max(0.0, slots - running) * (b - a) / slots
        if b <= last_open:
            switch += idle
        else:
            tail += idle
    return switch, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole", type=int, default=0, metavar="N",
                        help="run the whole cpu sweep N times instead")
    parser.add_argument("--log", metavar="FILE",
                        help="with --whole: append the sweeps' lines there, timed")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.whole:
        rows, loads = [], []
        for _ in range(args.whole):
            before = load_average()
            with tempfile.TemporaryDirectory(prefix="medsweep-bench-") as tmp:
                rows.append(run_whole(args, Path(tmp)))
            loads.append(f"{before} -> {load_average()}")
            print(f"run {len(rows)}: overhead {rows[-1]['overhead']:.3f}x "
                  f"(load {loads[-1]})", flush=True)
        print_whole(rows, args, loads)
        return
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-") as tmp:
        rows = [run(s, reuse, args, Path(tmp))
                for s, reuse in (("fifo", True), ("asha", True), ("asha", False))]
    print(f"\nbrain phantom, cpu profile space, {args.num_samples} samples x "
          f"{args.max_epochs} epochs at {args.resolution} px, seed {args.seed}, "
          f"{os.cpu_count()} cores")
    print(f"{'scheduler':<10}{'reuse actors':>13}{'trials':>7}{'epochs':>8}{'best val acc':>14}"
          f"{'wall s':>9}{'sum trial s':>13}{'overhead':>10}{'start s':>9}{'span s':>8}"
          f"{'span overhead':>15}{'switch s':>10}{'tail s':>8}{'without tail':>14}")
    for r in rows:
        print(f"{r['scheduler']:<10}{'yes' if r['reuse'] else 'no':>13}{r['trials']:>7}"
              f"{r['epochs']:>8}{r['best']:>14.3f}{r['wall_s']:>9.1f}{r['trial_s']:>13.1f}"
              f"{r['overhead']:>9.2f}x{r['start_s']:>9.1f}{r['span_s']:>8.1f}"
              f"{r['span_overhead']:>14.2f}x{r['switch_s']:>10.1f}{r['tail_s']:>8.1f}"
              f"{r['no_tail_overhead']:>13.2f}x")
    print("overhead: wall / (sum of trial s / slots). start: before the first trial opens. "
          "switch: slots idle between trials. tail: slots idle once no trial is left to start "
          "(the last trials run alone); 'without tail' leaves it out.")
    fifo, asha, fresh = rows
    print(f"ASHA used {asha['epochs'] / fifo['epochs']:.0%} of FIFO's epochs; best metric "
          f"{asha['best']:.3f} vs {fifo['best']:.3f}")
    print(f"ASHA with reused actors: {asha['wall_s']:.1f} s wall, overhead "
          f"{asha['overhead']:.2f}x; with a fresh process per trial: {fresh['wall_s']:.1f} s, "
          f"{fresh['overhead']:.2f}x")


if __name__ == "__main__":
    main()
