"""95% bootstrap intervals for test metrics: stratified by class, whole groups resampled.

A group (patient, lesion) is what must not be split: when one patient has several images, they
are drawn together or not at all, else the interval is too narrow. Each group belongs to the
stratum of its most frequent class; each stratum keeps its number of groups in every resample,
so a rare class is never missing from a resample by chance. Percentile intervals.

An interval can also mean nothing (`interval_note`): when the split holds fewer than
MIN_GROUPS groups, or when it comes out zero-width at a value the metric could move away from.
Such a row keeps its point, loses its low and high (NaN) and says why in its `note`, so no
reader mistakes a single resampled patient for perfect precision.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical.weighted_metrics import resample_counts

# counts (B, n) -> {name: (B,) values}: figures of every resample at once (`weighted_metrics`)
Weighted = Callable[[np.ndarray], Mapping[str, np.ndarray]]

DEFAULT_RESAMPLES = 1000
# Resamples scored at once: B x n counts of about this many entries (1 MiB in float64), so the
# few arrays of that size a figure needs stay small for any n; larger chunks were no faster.
CHUNK_ENTRIES = 1 << 17
# A percentile bootstrap redraws the groups it was given: with n of them it sees only their
# spread (too small by about sqrt((n-1)/n), more for a rate near 0 or 1), and its 2.5% and
# 97.5% percentiles rest on the few most extreme of the resamples those n allow (1 group: one
# resample, the sample itself, so a zero-width interval). Its coverage then falls below the 95%
# it claims, badly so for a handful of groups; about 20 units is the usual floor below which a
# percentile interval is not trusted. Fewer: no interval is shown, only the point.
MIN_GROUPS = 20
ZERO_WIDTH = 1e-12  # high - low below this is no spread at all
# Values at which a figure cannot move within its range (0 and 1 for a rate, 0 for a loss or
# an error, 1 for R²): there a zero-width interval is the truth, e.g. every resample perfect.
BOUNDS = (0.0, 1.0)
# A paired difference also sits still at 0 when both models answer every case alike.
DIFFERENCE_BOUNDS = (-1.0, 0.0, 1.0)
NO_INTERVAL = "[no interval]"  # shown in place of "[low, high]"


def count_units(labels: np.ndarray, groups: np.ndarray | None) -> int:
    """The resampling units of a split: its distinct groups, or its cases when none given."""
    return len(labels) if groups is None else int(len(np.unique(np.asarray(groups))))


def interval_note(units: int, point: float, low: float, high: float,
                  bounds: Sequence[float] = BOUNDS) -> str:
    """Why this interval means nothing, or "" when it is sound: too few groups to resample
    (< MIN_GROUPS), or zero width while the point sits away from every value in `bounds`."""
    if units < MIN_GROUPS:
        return (f"test holds {units} group: no interval" if units == 1 else
                f"test holds {units} groups (< {MIN_GROUPS}): no interval")
    if (np.isfinite(point) and np.isfinite(low) and np.isfinite(high)
            and high - low < ZERO_WIDTH
            and all(abs(point - b) > ZERO_WIDTH for b in bounds)):
        return "zero-width interval: no interval"
    return ""


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
    classes, label_of_case = np.unique(labels, return_inverse=True)
    # each group's most frequent class, the smallest on a tie
    tally = np.bincount(group_of_case * len(classes) + label_of_case,
                        minlength=len(codes) * len(classes)).reshape(len(codes), len(classes))
    stratum = tally.argmax(axis=1)
    by_stratum = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    # group g's cases, ascending: members[first[g]:first[g] + size[g]]
    members = np.argsort(group_of_case, kind="stable")
    size = np.bincount(group_of_case, minlength=len(codes))
    first = np.cumsum(size) - size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        chosen = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in by_stratum])
        lengths = size[chosen]
        offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out.append(members[np.repeat(first[chosen], lengths) + offset])
    return out


def weighted_draws(weighted: Weighted, n_cases: int,
                   resamples: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """`weighted(counts)` of every resample, scored CHUNK_ENTRIES counts at a time."""
    step = max(1, CHUNK_ENTRIES // max(n_cases, 1))
    parts = [weighted(resample_counts(resamples[i:i + step], n_cases))
             for i in range(0, len(resamples), step)]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def bootstrap_intervals(metrics: Callable[[np.ndarray], Mapping[str, float]] | None,
                        n_cases: int, resamples: Sequence[np.ndarray], *, level: float = 0.95,
                        units: int | None = None, bounds: Sequence[float] = BOUNDS,
                        weighted: Weighted | None = None) -> pd.DataFrame:
    """One row per figure: point (on all `n_cases`), low, high (percentiles of the resampled
    values, NaNs dropped), resamples used, groups (`units`, from `count_units`; None: each case
    its own) and note (`interval_note`; when set, low and high are NaN).

    The figures are `weighted(counts)` -> {name: (B,) values}, every resample scored at once
    from its counts (`weighted_metrics`), then `metrics(indices)` -> {name: value}, called
    once per resample, for the figures that have no weighted form. Pass the same `resamples`
    (from `resample_indices`) for every model compared: paired intervals."""
    if not resamples:
        raise ValueError("no resamples")
    point: dict[str, float] = {}
    draws: dict[str, Sequence[float]] = {}
    if weighted is not None:
        point.update({k: float(v[0]) for k, v in weighted(np.ones((1, n_cases))).items()})
        draws.update(weighted_draws(weighted, n_cases, resamples))
    if metrics is not None:
        own = dict(metrics(np.arange(n_cases)))
        point.update(own)
        draws.update({k: [] for k in own})
        for idx in resamples:
            for k, v in metrics(idx).items():
                if k in own:
                    draws[k].append(v)
    alpha = (1.0 - level) / 2.0
    units = n_cases if units is None else int(units)
    rows = []
    for name, value in point.items():
        values = np.asarray(draws[name], dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [alpha, 1.0 - alpha]) if len(values)
                     else (np.nan, np.nan))
        note = interval_note(units, float(value), float(low), float(high), bounds)
        if note:
            low = high = np.nan
        rows.append({"metric": name, "point": float(value), "low": float(low),
                     "high": float(high), "resamples": int(len(values)), "groups": units,
                     "note": note})
    return pd.DataFrame(rows)


def intervals_by_model(test_probs: Mapping[str, np.ndarray], ensemble: str,
                       ensemble_metrics: Callable[[np.ndarray], Mapping[str, float]] | None,
                       weighted: Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]],
                       resamples: Sequence[np.ndarray], units: int | None = None) -> pd.DataFrame:
    """`bootstrap_intervals` of every model row on the same resamples: each row's figures
    `weighted(counts, probs)`, the `ensemble` row's followed by its own `ensemble_metrics(idx)`
    (the operating point, calibration, referral); one frame with a `model` column first."""
    frames = []
    for name, probs in test_probs.items():
        frame = bootstrap_intervals(ensemble_metrics if name == ensemble else None,
                                    len(probs), resamples, units=units,
                                    weighted=lambda counts, p=probs: weighted(counts, p))
        frame.insert(0, "model", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def format_interval(point: float, low: float, high: float, digits: int = 3,
                    note: str = "") -> str:
    """'0.912 [0.874, 0.945]'; '0.830 [no interval]' when a `note` says it means nothing (the
    reason is stated once elsewhere, `note_lines`); just the point when there is none."""
    if note:
        return f"{point:.{digits}f} {NO_INTERVAL}"
    if not np.isfinite(low) or not np.isfinite(high):
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


_COVERAGE = ("coverage_at_refer_cut", "refer_coverage")  # the share of cases not referred
_ACCEPTED = ("accuracy_accepted_at_refer_cut", "accuracy_accepted")  # their accuracy


def figure_text(metric: str, point: float, low: float, high: float, digits: int = 3,
                note: str = "", cases: str = "test") -> str:
    """`format_interval`, except that a refer figure with no accepted case says so: its
    accuracy is `none (no test case accepted)`, not `nan`, and its coverage `0.000 (every case
    referred: no test case accepted)`, not an interval of zeros."""
    if metric.endswith(_ACCEPTED) and point != point:
        return f"none (no {cases} case accepted)"
    if metric.endswith(_COVERAGE) and point == 0:
        return f"{0:.{digits}f} (every case referred: no {cases} case accepted)"
    return format_interval(point, low, high, digits, note)


def paired_difference(metric: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                      y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                      resamples: Sequence[np.ndarray], *, level: float = 0.95,
                      units: int | None = None) -> dict:
    """`metric(y, probs, counts)` (one value per row of counts, `weighted_metrics`) of A minus
    that of B on the same resampled cases each time: the interval of the difference, which is
    what says whether A is better (independent intervals that overlap say nothing). {point,
    low, high, resamples, groups, note}: with a note, low and high are NaN and no verdict may
    be drawn."""
    y, probs_a, probs_b = np.asarray(y), np.asarray(probs_a), np.asarray(probs_b)
    if len(probs_a) != len(y) or len(probs_b) != len(y):
        raise ValueError(f"{len(y)} labels, {len(probs_a)} and {len(probs_b)} predictions")

    def difference(counts: np.ndarray) -> dict[str, np.ndarray]:
        return {"difference": metric(y, probs_a, counts) - metric(y, probs_b, counts)}

    row = bootstrap_intervals(None, len(y), resamples, level=level, units=units,
                              bounds=DIFFERENCE_BOUNDS, weighted=difference).iloc[0]
    return {"point": float(row.point), "low": float(row.low), "high": float(row.high),
            "resamples": int(row.resamples), "groups": int(row.groups), "note": str(row.note)}


def row_note(row) -> str:
    """A row's note; "" for a frame written before notes existed."""
    note = getattr(row, "note", "") if not isinstance(row, Mapping) else row.get("note", "")
    return note if isinstance(note, str) else ""


def note_lines(intervals: pd.DataFrame) -> list[str]:
    """Each reason the frame's intervals mean nothing, once: 'test holds 1 group: no interval
    for any test figure', or '... for brier, ece' when only some rows carry it."""
    if "note" not in intervals.columns or intervals.empty:
        return []
    notes = intervals["note"].fillna("").astype(str)
    lines = []
    for note in dict.fromkeys(n for n in notes if n):
        rows = intervals[notes == note]
        where = ("any test figure" if len(rows) == len(intervals) else
                 ", ".join(dict.fromkeys(rows["metric"].astype(str))))
        lines.append(f"{note} for {where}")
    return lines


def no_interval_lines(intervals: pd.DataFrame, difference: dict | None, metric: str) -> list[str]:
    """`note_lines` of the frame, then the paired difference's reason when it has its own (one
    that the frame already states for every figure is not said twice)."""
    lines = note_lines(intervals)
    note = (difference or {}).get("note", "")
    if note and f"{note} for any test figure" not in lines:
        lines.append(f"{note} for ensemble - best single ({metric}, paired)")
    return lines


def sound_interval_metrics(intervals: pd.DataFrame, difference: dict | None,
                           metric: str) -> dict[str, float]:
    """The flat test figures of one model's rows: `test_<m>` always, `test_<m>_ci_low/_ci_high`
    only beside a sound interval; the same for `test_<metric>_minus_best_single`."""
    out: dict[str, float] = {}
    for row in intervals.itertuples():
        out[f"test_{row.metric}"] = row.point
        if not row_note(row):
            out[f"test_{row.metric}_ci_low"] = row.low
            out[f"test_{row.metric}_ci_high"] = row.high
    if difference is not None:
        key = f"test_{metric}_minus_best_single"
        out[key] = difference["point"]
        if not difference.get("note"):
            out.update({f"{key}_ci_low": difference["low"], f"{key}_ci_high": difference["high"]})
    return out
