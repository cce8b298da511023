"""Conformal prediction sets: the classes a case may be, with a stated coverage, fitted on
held-out calibrated probabilities (split conformal, adaptive prediction sets; Romano, Sesia and
Candès 2020, non-randomised). Pure numpy, shared by the clinical report, the served model and
the pre-registration check.

- The mass above a class: the calibrated probability of the classes ranked strictly above it
  (classes sorted by probability, most probable first; ties by class order).
- A held-out case's score: the mass above its true class.
- The quantile q: the ceil((n + 1) * coverage)-th smallest of the n scores. With fewer than
  `min_cases(coverage)` scores that rank does not exist, q is infinite (`EVERY_CLASS`): every
  class is in every set. That is flagged (`SetFit.every_class`), never hidden.
- A case's set: every class whose mass above is at most q, i.e. the classes in order of
  probability until their cumulative probability first exceeds q, that class included. The most
  probable class is always in it (nothing is above it).
- Class-conditional ("Mondrian"): one quantile per true class, fitted on that class's held-out
  cases only, so each class gets its coverage (not only the average over classes); a set then
  need not be a prefix.

Score and set are the same function of the probabilities (this is APS with its uniform draw
fixed at 0), so if the held-out and the new cases are exchangeable, a new case's true class is
in its set with probability >= coverage. Scoring by the cumulative probability *including* the
true class while adding the class that crosses q mixes two rules and over-covers badly (all
classes in most sets); tests/test_conformal.py shows the gap.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

DEFAULT_SET_COVERAGE = 0.90
EVERY_CLASS = 2.0  # a quantile above any mass: too few held-out cases, every class in every set
SET_TOLERANCE = 1e-9  # a mass this close to its quantile counts as on it (float summation order)


def check_coverage(coverage: float) -> float:
    """The nominal coverage, or a ValueError naming it: strictly between 0 and 1."""
    if not isinstance(coverage, (int, float)) or not 0.0 < coverage < 1.0:
        raise ValueError(f"set coverage must be strictly between 0 and 1, got {coverage!r}")
    return float(coverage)


def quantile_rank(n: int, coverage: float) -> int:
    """ceil((n + 1) * coverage): the rank of the quantile among n scores (> n: none)."""
    # rounded first: (9 + 1) * 0.9 is 9.000000000000002 in floating point, not 9
    return math.ceil(round((n + 1) * check_coverage(coverage), 9))


def min_cases(coverage: float) -> int:
    """The fewest held-out scores with a finite quantile at `coverage` (0.90: 9; 0.95: 19):
    the smallest n with ceil((n + 1) * coverage) <= n."""
    n = 1
    while quantile_rank(n, coverage) > n:
        n += 1
    return n


def mass_above(probs: np.ndarray) -> np.ndarray:
    """(N, C) calibrated probabilities -> (N, C): per class, the probability of the classes
    ranked strictly above it."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"prediction sets need (cases, classes >= 2) probabilities, got shape "
                         f"{p.shape}")
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(ranked, axis=1) - ranked
    out = np.empty_like(p)
    np.put_along_axis(out, order, above, axis=1)
    return out


def scores(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each case's nonconformity: the mass above its true class."""
    y = np.asarray(y, dtype=np.int64)
    above = mass_above(probs)
    if len(y) != len(above):
        raise ValueError(f"{len(y)} labels for {len(above)} cases")
    if len(y) and (y.min() < 0 or y.max() >= above.shape[1]):
        raise ValueError(f"labels must be class indices 0..{above.shape[1] - 1}, got "
                         f"{y.min()}..{y.max()}")
    return above[np.arange(len(y)), y]


def conformal_quantile(values: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest value; `EVERY_CLASS` when n is too small."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    k = quantile_rank(len(values), coverage)
    return EVERY_CLASS if k > len(values) else float(values[k - 1])


@dataclass(frozen=True)
class SetFit:
    """What was fitted for one head's prediction sets, on its held-out predictions only:
    one quantile, or (`conditional`) one per class in the head's class order, each with the
    held-out cases it was fitted on."""

    coverage: float  # the nominal coverage, e.g. 0.90
    quantiles: tuple[float, ...]
    cases: tuple[int, ...]
    conditional: bool = False

    def __post_init__(self) -> None:
        check_coverage(self.coverage)
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        object.__setattr__(self, "cases", tuple(int(n) for n in self.cases))
        if not self.quantiles or len(self.cases) != len(self.quantiles):
            raise ValueError(f"{len(self.quantiles)} set quantile(s) for {len(self.cases)} "
                             "case counts")
        if not self.conditional and len(self.quantiles) != 1:
            raise ValueError(f"a marginal set rule has one quantile, got {len(self.quantiles)}")
        bad = [q for q in self.quantiles if not (0.0 <= q <= 1.0 or q == EVERY_CLASS)]
        if bad:
            raise ValueError(f"a set quantile is a probability mass in [0, 1] or {EVERY_CLASS} "
                             f"(every class), got {bad[0]}")

    def per_class(self, n_classes: int) -> np.ndarray:
        """The quantile each class is compared with, (C,)."""
        if self.conditional and len(self.quantiles) != n_classes:
            raise ValueError(f"{len(self.quantiles)} class quantiles for {n_classes} classes")
        return np.asarray(self.quantiles if self.conditional else self.quantiles * n_classes)

    @property
    def every_class(self) -> tuple[int, ...]:
        """Which quantiles are infinite (too few held-out cases): their classes are in every
        set; (0,) for a marginal rule means every set is every class."""
        return tuple(i for i, q in enumerate(self.quantiles) if q == EVERY_CLASS)

    def to_dict(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "quantiles": list(self.quantiles),
                "cases": list(self.cases), "conditional": self.conditional}

    @classmethod
    def from_dict(cls, data: "SetFit | Mapping[str, Any]") -> "SetFit":
        return data if isinstance(data, SetFit) else cls(**data)


def fit_sets(probs: np.ndarray, y: np.ndarray, coverage: float = DEFAULT_SET_COVERAGE,
             conditional: bool = False) -> SetFit:
    """The quantile(s) of the held-out scores at `coverage`; `conditional`: one per class,
    each on that class's held-out cases."""
    coverage = check_coverage(coverage)
    s, y = scores(probs, y), np.asarray(y, dtype=np.int64)
    if not len(s):
        raise ValueError("no held-out cases to fit prediction sets on")
    if not conditional:
        return SetFit(coverage, (conformal_quantile(s, coverage),), (len(s),))
    classes = range(np.asarray(probs).shape[1])
    return SetFit(coverage, tuple(conformal_quantile(s[y == k], coverage) for k in classes),
                  tuple(int(np.sum(y == k)) for k in classes), conditional=True)


def in_set(probs: np.ndarray, fit: SetFit) -> np.ndarray:
    """(N, C) bool: class k is in a case's set when the mass above it is at most its
    quantile (within SET_TOLERANCE). The most probable class always is."""
    above = mass_above(probs)
    return above <= fit.per_class(above.shape[1])[None, :] + SET_TOLERANCE


def near_quantile(probs: np.ndarray, fit: SetFit, tolerance: float) -> np.ndarray:
    """(N,) bool: some class's mass above sits within `tolerance` of its quantile, where two
    computations of the same probabilities may disagree on the set."""
    above = mass_above(probs)
    return np.any(np.abs(above - fit.per_class(above.shape[1])[None, :]) <= tolerance, axis=1)


def set_labels(probs: np.ndarray, fit: SetFit, classes: Sequence[str]) -> list[list[str]]:
    """Each case's set as class names, most probable first."""
    p = np.asarray(probs, dtype=np.float64)
    member = in_set(p, fit)
    order = np.argsort(-p, axis=1, kind="stable")
    return [[classes[k] for k in row if keep[k]] for row, keep in zip(order, member)]


def set_text(labels: Sequence[str]) -> str:
    """A set as the served model writes it: JSON list text, '["glioma", "meningioma"]'."""
    return json.dumps(list(labels))


def set_figures(y: np.ndarray, member: np.ndarray, classes: Sequence[str],
                prefix: str = "") -> dict[str, float]:
    """Test figures of sets (`member` from `in_set`): coverage overall and per true class
    (NaN for a class with no case), mean set size, and the share of sets of each size."""
    y, member = np.asarray(y, dtype=np.int64), np.asarray(member, dtype=bool)
    covered = member[np.arange(len(y)), y]
    size = member.sum(axis=1)
    nan = float("nan")
    out = {f"{prefix}set_coverage": float(covered.mean()) if len(y) else nan}
    for k, name in enumerate(classes):
        mine = y == k
        out[f"{prefix}set_coverage_{safe_name(name)}"] = (float(covered[mine].mean())
                                                          if mine.any() else nan)
    out[f"{prefix}set_size_mean"] = float(size.mean()) if len(y) else nan
    for s in range(1, len(classes) + 1):
        out[f"{prefix}set_size_{s}_share"] = float(np.mean(size == s)) if len(y) else nan
    return out


def safe_name(name: str) -> str:
    """A class name as it appears in a metric name."""
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def coverage_range(n_test: int, n_held: int, coverage: float,
                   level: float = 0.99) -> tuple[float, float]:
    """Where a test split's empirical coverage falls with probability `level` when the
    guarantee holds with continuous scores: the covered count is beta-binomial (the coverage
    given the held-out draw is Beta(k, n + 1 - k), k the quantile's rank), binomial's spread
    widened by the held-out draw. Ties in the scores only raise coverage, so the lower end
    stays a bound. (NaN, NaN) when the quantile is infinite."""
    from scipy.stats import betabinom

    k = quantile_rank(n_held, coverage)
    if k > n_held or n_test < 1:
        return float("nan"), float("nan")
    dist = betabinom(n_test, k, n_held + 1 - k)
    tail = (1.0 - level) / 2.0
    return float(dist.ppf(tail)) / n_test, float(dist.ppf(1.0 - tail)) / n_test
