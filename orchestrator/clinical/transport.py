"""Did the model's performance transport to the external site? The external figure against the
internal test figure, with an interval for their difference.

The two sets are independent samples (other patients, another site), so the difference's
interval draws both: each bootstrap round resamples the external groups and, independently,
the internal test groups (from the version's recorded test answers), and takes external minus
internal. The internal uncertainty is thus carried, not ignored: treating the internal figure
as exact would make the interval too narrow, the more so the smaller the internal test split.
When either side holds fewer groups than a percentile interval needs (`bootstrap.MIN_GROUPS`),
or has no sound interval for another reason (zero width), no interval is drawn for the
difference and no verdict is given either way.

Verdict, in the metric's direction (`mode`): "did not transport" when the whole interval lies
on the worse side of 0; otherwise "transported" (no drop shown beyond the resampling noise; a
wide interval makes that a weak statement, and the line prints the interval so it shows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from orchestrator.clinical.bootstrap import (DIFFERENCE_BOUNDS, MIN_GROUPS,
                                             bootstrap_intervals, format_interval,
                                             interval_note)

Figure = Callable[[np.ndarray], float]  # case indices -> the metric on those cases


@dataclass(frozen=True)
class Estimate:
    point: float
    low: float
    high: float
    groups: int
    note: str = ""  # why there is no interval ("" when it is sound)

    def text(self, digits: int = 3) -> str:
        return format_interval(self.point, self.low, self.high, digits, self.note)


@dataclass(frozen=True)
class Transport:
    metric: str
    mode: str  # "max": higher is better; "min": lower is
    external: Estimate
    internal: Estimate
    difference: Estimate  # external - internal
    verdict: str  # "transported" | "did not transport" | "no verdict"

    @property
    def line(self) -> str:
        """The one line a reader needs: verdict, both figures, the difference."""
        figures = (f"external {self.metric} {self.external.text()} vs internal "
                   f"{self.internal.text()}; difference {self.difference.text()}")
        if self.verdict == "no verdict":
            return (f"cannot say whether performance transported ({self.difference.note}): "
                    f"{figures}")
        return f"{self.verdict}: {figures}"


def _estimate(figure: Figure, n: int, resamples: Sequence[np.ndarray], units: int) -> Estimate:
    row = bootstrap_intervals(lambda idx: {"v": figure(idx)}, n, resamples, units=units).iloc[0]
    return Estimate(float(row.point), float(row.low), float(row.high), units, str(row.note))


def _note(external: Estimate, internal: Estimate) -> str:
    short = [f"{name} test holds {e.groups} groups" for name, e in
             (("external", external), ("internal", internal))
             if e.groups < MIN_GROUPS]
    return f"{' and '.join(short)} (< {MIN_GROUPS})" if short else ""


def compare(metric: str, mode: str, external: Figure, n_external: int,
            external_resamples: Sequence[np.ndarray], external_groups: int,
            internal: Figure, n_internal: int, internal_resamples: Sequence[np.ndarray],
            internal_groups: int, level: float = 0.95) -> Transport:
    """The external and internal estimates and their difference, bootstrapped independently
    (round k pairs external resample k with internal resample k; give as many of each)."""
    if mode not in ("max", "min"):
        raise ValueError(f"metric mode must be max or min, got {mode!r}")
    if len(external_resamples) != len(internal_resamples):
        raise ValueError(f"{len(external_resamples)} external and {len(internal_resamples)} "
                         "internal resamples: give as many of each")
    ext = _estimate(external, n_external, external_resamples, external_groups)
    inn = _estimate(internal, n_internal, internal_resamples, internal_groups)
    draws = np.array([external(e) - internal(i)
                      for e, i in zip(external_resamples, internal_resamples)], dtype=float)
    draws = draws[np.isfinite(draws)]
    alpha = (1.0 - level) / 2.0
    low, high = (np.quantile(draws, [alpha, 1.0 - alpha]) if len(draws)
                 else (np.nan, np.nan))
    point = ext.point - inn.point
    # a side without a sound interval (too few groups, or zero width: a model that calls one
    # class has the same accuracy in every class-stratified resample) gives none to the
    # difference either, even where its draws happen to sit still at 0
    note = (_note(ext, inn) or next((f"{name} {e.note}" for name, e in
                                     (("external", ext), ("internal", inn)) if e.note), "")
            or interval_note(max(external_groups, internal_groups), point, float(low),
                             float(high), DIFFERENCE_BOUNDS))
    if note or not np.isfinite(point):
        low = high = float("nan")
        note = note or "the difference is undefined"
    difference = Estimate(float(point), float(low), float(high),
                          min(external_groups, internal_groups), note)
    return Transport(metric, mode, ext, inn, difference, _verdict(difference, mode))


def _verdict(difference: Estimate, mode: str) -> str:
    if difference.note:
        return "no verdict"
    worse = difference.high < 0.0 if mode == "max" else difference.low > 0.0
    return "did not transport" if worse else "transported"
