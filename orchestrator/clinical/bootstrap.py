"""95% bootstrap intervals for test metrics: stratified by class, whole groups resampled.

A group (patient, lesion) is what must not be split: when one patient has several images, they
are drawn together or not at all, else the interval is too narrow. Each group belongs to the
stratum of its most frequent class; each stratum keeps its number of groups in every resample,
so a rare class is never missing from a resample by chance. Percentile intervals.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_RESAMPLES = 1000


def resample_indices(labels: np.ndarray, groups: np.ndarray | None, n_resamples: int,
                     seed: int = 0) -> list[np.ndarray]:
    """`n_resamples` arrays of case indices; `groups` None: every case is its own group."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} cases")
    codes, group_of_case = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_of_case == g) for g in range(len(codes))]
    stratum = np.array([pd.Series(labels[m]).mode().iloc[0] for m in members])
    by_stratum = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        chosen = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in by_stratum])
        out.append(np.concatenate([members[g] for g in chosen]))
    return out


def bootstrap_intervals(metrics: Callable[[np.ndarray], Mapping[str, float]], n_cases: int,
                        resamples: Sequence[np.ndarray], *, level: float = 0.95) -> pd.DataFrame:
    """`metrics(indices)` -> {name: value}; one row per metric: point (on all `n_cases`), low,
    high (percentiles of the resampled values, NaNs dropped), resamples used.

    Pass the same `resamples` (from `resample_indices`) for every model compared: paired
    intervals, and the resampling is paid once."""
    if not resamples:
        raise ValueError("no resamples")
    point = dict(metrics(np.arange(n_cases)))
    draws = {k: [] for k in point}
    for idx in resamples:
        for k, v in metrics(idx).items():
            if k in draws:
                draws[k].append(v)
    alpha = (1.0 - level) / 2.0
    rows = []
    for name, value in point.items():
        values = np.asarray(draws[name], dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [alpha, 1.0 - alpha]) if len(values)
                     else (np.nan, np.nan))
        rows.append({"metric": name, "point": float(value), "low": float(low),
                     "high": float(high), "resamples": int(len(values))})
    return pd.DataFrame(rows)


def intervals_by_model(test_probs: Mapping[str, np.ndarray], ensemble: str,
                       ensemble_metrics: Callable[[np.ndarray], Mapping[str, float]],
                       metrics: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
                       resamples: Sequence[np.ndarray]) -> pd.DataFrame:
    """`bootstrap_intervals` of every model row on the same resamples: the `ensemble` row by
    its own function (it adds the operating point, calibration, referral), every other row by
    `metrics(idx, probs)`; one frame with a `model` column first."""
    frames = []
    for name, probs in test_probs.items():
        fn = ensemble_metrics if name == ensemble else (
            lambda idx, p=probs: metrics(idx, p))
        frame = bootstrap_intervals(fn, len(next(iter(test_probs.values()))), resamples)
        frame.insert(0, "model", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def format_interval(point: float, low: float, high: float, digits: int = 3) -> str:
    """'0.912 [0.874, 0.945]' (or just the point when there is no interval)."""
    if not np.isfinite(low) or not np.isfinite(high):
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def paired_difference(metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray,
                      probs_a: np.ndarray, probs_b: np.ndarray,
                      resamples: Sequence[np.ndarray], *, level: float = 0.95) -> dict:
    """`metric(y, probs)` of A minus that of B on the same resampled cases each time: the
    interval of the difference, which is what says whether A is better (independent intervals
    that overlap say nothing). {point, low, high, resamples}."""
    y, probs_a, probs_b = np.asarray(y), np.asarray(probs_a), np.asarray(probs_b)
    if len(probs_a) != len(y) or len(probs_b) != len(y):
        raise ValueError(f"{len(y)} labels, {len(probs_a)} and {len(probs_b)} predictions")

    def difference(idx: np.ndarray) -> dict[str, float]:
        return {"difference": metric(y[idx], probs_a[idx]) - metric(y[idx], probs_b[idx])}

    row = bootstrap_intervals(difference, len(y), resamples, level=level).iloc[0]
    return {"point": float(row.point), "low": float(row.low), "high": float(row.high),
            "resamples": int(row.resamples)}
