"""Prediction sets on real images: how often the split-conformal sets cover the truth, and how
large they are, at the nominal 0.90, marginal and class-conditional.

Real images that scikit-learn ships (its 1,797 8 x 8 handwritten digits, 10 classes): a
logistic regression on a third of them, temperature-free probabilities (its own softmax), the
sets fitted on a second third (the held-out split) and measured on the last third (the test
split); 200 random three-way splits. A figure from the phantoms alone would say little (their
3-epoch models answer near-uniform probabilities, so every set holds every class). Prints the
mean and 5th-95th percentile test coverage, the share of splits whose coverage falls in the
99% range the guarantee gives (`conformal.coverage_range`), the smallest per-class coverage,
and the mean set size; docs/benchmarks.md quotes the figures.

    python bench/conformal.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.clinical.conformal import (coverage_range, fit_sets, in_set,  # noqa: E402
                                             set_figures)

COVERAGE = 0.90
SPLITS = 200


def _one_split(x: np.ndarray, y: np.ndarray, seed: int, conditional: bool) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, held, test = np.array_split(order, 3)
    scaler = StandardScaler().fit(x[train])
    # a weak model (C small), so sets are not all of size one and the sizes say something
    model = LogisticRegression(C=0.002, max_iter=2000).fit(scaler.transform(x[train]), y[train])
    p_held = model.predict_proba(scaler.transform(x[held]))
    p_test = model.predict_proba(scaler.transform(x[test]))
    fit = fit_sets(p_held, y[held], COVERAGE, conditional)
    figures = set_figures(y[test], in_set(p_test, fit), [str(k) for k in range(10)])
    low, high = coverage_range(len(test), len(held), COVERAGE)
    per_class = [figures[f"set_coverage_{k}"] for k in range(10)]
    return {"coverage": figures["set_coverage"], "in_range": low <= figures["set_coverage"] <= high,
            "worst_class": float(np.nanmin(per_class)), "size": figures["set_size_mean"],
            "accuracy": float(np.mean(p_test.argmax(axis=1) == y[test]))}


def main() -> None:
    started = time.perf_counter()
    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target
    print(f"scikit-learn digits: {len(y)} real images, 10 classes; {SPLITS} random splits into "
          f"thirds (train / held-out / test); nominal coverage {COVERAGE}")
    print(f"{'sets':<18} {'coverage mean':>13} {'5th-95th pct':>15} {'in 99% range':>12} "
          f"{'worst class (mean)':>18} {'set size':>8} {'top-1 acc':>9}")
    for conditional in (False, True):
        rows = [_one_split(x, y, seed, conditional) for seed in range(SPLITS)]
        cov = np.array([r["coverage"] for r in rows])
        in_range = ("n/a" if conditional  # the range is the marginal quantile's
                    else f"{np.mean([r['in_range'] for r in rows]):.3f}")
        print(f"{'class-conditional' if conditional else 'marginal':<18} {cov.mean():>13.3f} "
              f"{np.percentile(cov, 5):>7.3f}-{np.percentile(cov, 95):.3f} {in_range:>12} "
              f"{np.mean([r['worst_class'] for r in rows]):>18.3f} "
              f"{np.mean([r['size'] for r in rows]):>8.2f} "
              f"{np.mean([r['accuracy'] for r in rows]):>9.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
