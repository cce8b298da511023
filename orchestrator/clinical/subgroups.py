"""The test figures per subgroup (`--subgroup`: sex, age band, site, scanner...): each value's
cases measured alone, with group-bootstrap intervals (`bootstrap.py`), and flagged when its
interval lies wholly on the worse side of the overall figure.

Read only after every choice is fixed: nothing here is fitted, and nothing fitted reads it.
A value with fewer than MIN_CASES cases or MIN_UNITS groups is listed as too few to measure
(its figure would be noise); one with fewer than `bootstrap.MIN_GROUPS` groups gets its point
but no interval (the bootstrap's own floor), hence never a flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical.bootstrap import bootstrap_intervals, count_units, resample_indices
from orchestrator.data.subgroups import value_order

MIN_CASES = 10  # test cases of one value, below which it is not measured
MIN_UNITS = 5  # groups (patients, lesions) of one value, likewise
TOO_FEW = "too few to measure"
COLUMNS = ("subgroup", "value", "n", "groups", "metric", "point", "low", "high", "note",
           "overall", "flagged", "status")

Figures = Callable[[np.ndarray], Mapping[str, float]]


@dataclass(frozen=True)
class Subgroups:
    """Every subgroup value's figures (`COLUMNS`, one row per value and figure; a value too
    few to measure has one row, status `TOO_FEW`) and the overall figures they face."""

    table: pd.DataFrame
    overall: Mapping[str, float]
    metrics: tuple[str, ...]  # the figures measured, task metric first
    names: tuple[str, ...]  # the subgroups asked, in order
    resamples: int = 0  # bootstrap resamples per value

    @property
    def flagged(self) -> pd.DataFrame:
        """The rows whose interval lies wholly on the worse side of the overall figure."""
        return self.table[self.table["flagged"].astype(bool)]

    def measured(self, name: str) -> pd.DataFrame:
        return self.table[(self.table["subgroup"] == name) & (self.table["status"] != TOO_FEW)]

    def too_few(self, name: str) -> pd.DataFrame:
        return self.table[(self.table["subgroup"] == name) & (self.table["status"] == TOO_FEW)]


def decision_metrics(classes: Sequence[str], positive: int | None) -> tuple[str, ...]:
    """The decision figures shown per subgroup: sensitivity and specificity (binary), else
    each class's recall (names as `clinical.external.decision_figures` gives them)."""
    from orchestrator.clinical.conformal import safe_name

    if positive is not None:
        return ("sensitivity", "specificity")
    return tuple(f"recall_{safe_name(c)}" for c in classes)


def measure_subgroups(values: Mapping[str, Sequence[str]], strata: np.ndarray,
                      groups: np.ndarray | None, figures: Figures, metrics: Sequence[str],
                      resamples: int, seed: int = 0,
                      lower_is_better: frozenset[str] = frozenset()) -> Subgroups:
    """`values`: subgroup name -> each test case's value; `strata`: the class each case is
    stratified by; `figures(idx)` -> {metric: value} of the cases `idx`. Each value's cases
    are resampled alone (whole groups, stratified); `overall` is `figures` on every case."""
    n = len(strata)
    groups_arr = None if groups is None else np.asarray(groups)
    overall_all = figures(np.arange(n))
    overall = {m: float(overall_all[m]) for m in metrics}
    rows: list[dict] = []
    for name, column in values.items():
        column = np.asarray(column, dtype=object)
        if len(column) != n:
            raise ValueError(f"subgroup {name}: {len(column)} values for {n} cases")
        for value in sorted(set(column), key=lambda v: value_order(str(v))):
            idx = np.flatnonzero(column == value)
            g = None if groups_arr is None else groups_arr[idx]
            units = count_units(strata[idx], g)
            base = {"subgroup": name, "value": str(value), "n": len(idx), "groups": units}
            if len(idx) < MIN_CASES or units < MIN_UNITS:
                rows.append({**base, "metric": "", "point": np.nan, "low": np.nan,
                             "high": np.nan, "note": "", "overall": np.nan, "flagged": False,
                             "status": TOO_FEW})
                continue
            draws = resample_indices(strata[idx], g, resamples, seed)
            frame = bootstrap_intervals(
                lambda sub, at=idx: _pick(figures(at[sub]), metrics),
                len(idx), draws, units=units)
            for r in frame.itertuples():
                worse = (r.low > overall[r.metric] if r.metric in lower_is_better
                         else r.high < overall[r.metric])
                rows.append({**base, "metric": r.metric, "point": r.point, "low": r.low,
                             "high": r.high, "note": r.note, "overall": overall[r.metric],
                             "flagged": bool(not r.note and np.isfinite(r.high) and worse),
                             "status": "measured"})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return Subgroups(table, overall, tuple(metrics), tuple(values), resamples)


def _pick(found: Mapping[str, float], metrics: Sequence[str]) -> dict[str, float]:
    return {m: float(found[m]) for m in metrics}


def ensemble_subgroups(inputs, options, evaluated, decided) -> Subgroups | None:
    """The ensemble's test split per subgroup value (`ClinicalInputs.subgroups`): the task
    metric on its probabilities and the first classification head's decision figures, at the
    decisions `evaluate` already fixed; None when no subgroup was asked."""
    from orchestrator.clinical.external import decision_figures
    from orchestrator.clinical.resampled_metrics import task_metrics

    if not inputs.subgroups:
        return None
    task, y_test = inputs.task, np.asarray(inputs.y_test)
    ens_test = np.asarray(inputs.test_probs["ensemble"], dtype=np.float64)
    first = next(eh for eh in evaluated if eh.head.is_classification)
    truth, decision = first.targets(y_test), decided[first.head.name][0]

    def figures(idx: np.ndarray) -> dict[str, float]:
        out = {task.metric: task_metrics(y_test[idx], ens_test[idx], task)[task.metric]}
        out.update(decision_figures(truth[idx], decision[idx], first.head.classes,
                                    first.positive))
        return out

    metrics = (task.metric, *decision_metrics(first.head.classes, first.positive))
    return measure_subgroups(inputs.subgroups, truth, inputs.test_groups, figures, metrics,
                             options.resamples, options.seed, worse_when_higher(task))


def worse_when_higher(task) -> frozenset[str]:
    """The task metric where lower is better (a loss); the decision figures never are."""
    return frozenset({task.metric}) if task.mode == "min" else frozenset()
