"""Cost of the clinical report's bootstrap: every resample scored at once from counts, one
resample at a time, and by scikit-learn.

    .venv/bin/python bench/bootstrap.py [--cases 1311] [--classes 4] [--resamples 1000]

Random (N, C) probabilities and labels; the same resamples (stratified, each case its own group)
scored by `orchestrator.clinical.weighted_metrics.weighted_metrics` on the (B, N) counts, in the
bootstrap's chunks (`bootstrap.weighted_draws`), by `resampled_metrics.fast_metrics` on each
resample's cases, and by `orchestrator.metrics.classification_metrics` (scikit-learn), which
give the same numbers. Each is timed on fresh resamples; the fastest of --repeats runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from orchestrator.clinical.bootstrap import resample_indices, weighted_draws  # noqa: E402
from orchestrator.clinical.resampled_metrics import fast_metrics  # noqa: E402
from orchestrator.clinical.weighted_metrics import weighted_metrics  # noqa: E402
from orchestrator.metrics import classification_metrics  # noqa: E402
from tasks import get_task  # noqa: E402


def _fastest(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1311)  # the brain MRI test split
    parser.add_argument("--classes", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sklearn-resamples", type=int, default=100,
                        help="scikit-learn is timed on this many and scaled to --resamples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    task = get_task({2: "pneumonia", 3: "brain/3class", 4: "brain/4class"}[args.classes])
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.cases)
    p = rng.dirichlet(np.ones(args.classes), args.cases)

    start = time.perf_counter()
    resamples = resample_indices(y, None, args.resamples)
    t_resample = time.perf_counter() - start
    t_once = _fastest(lambda: weighted_draws(
        lambda counts: weighted_metrics(y, p, counts, task.positive_index), args.cases,
        resamples), args.repeats)
    t_each = _fastest(lambda: [fast_metrics(y[idx], p[idx], task.positive_index)
                               for idx in resamples], args.repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_sk = _fastest(lambda: [classification_metrics(y[idx], p[idx], task)
                                 for idx in resamples[:args.sklearn_resamples]], 1)
    t_sk *= args.resamples / args.sklearn_resamples

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"{args.cases} cases, {args.classes} classes, {args.resamples} resamples "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    print(f"  drawing the resamples                 {t_resample:6.2f} s")
    print(f"  all at once (weighted_metrics)        {t_once:6.2f} s")
    print(f"  one at a time (fast_metrics)          {t_each:6.2f} s  "
          f"({1000 * t_each / args.resamples:.2f} ms a resample), {t_each / t_once:.1f}x slower")
    print(f"  scikit-learn, one at a time (scaled) {t_sk:6.2f} s  "
          f"({1000 * t_sk / args.resamples:.2f} ms a resample), {t_sk / t_once:.1f}x slower")


if __name__ == "__main__":
    main()
