"""Out-of-distribution score and cut: is an image unlike the ones the model was trained on?

The score is the Mahalanobis distance of a model's embedding to the nearest class mean of its
training embeddings, under one shared (tied) covariance shrunk by Ledoit-Wolf (Lee et al. 2018,
"A simple unified framework for detecting out-of-distribution samples"). Its cut is fitted on
held-out in-distribution scores at a stated false-alarm rate, the way split conformal prediction
picks a quantile: the ceil((n+1)(1-a))-th smallest of n held-out scores, so a new exchangeable
in-distribution image lands above it with probability at most a. A constant image (one pixel
value throughout) carries no content and is always flagged, whatever its score.

Pure numpy: the served model reads the statistics with nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_FALSE_ALARM = 0.05
DEFAULT_LAYER = "pool"  # the backbone's pooled features (see docs/benchmarks.md for why)


@dataclass(frozen=True)
class OodStatistics:
    """One model's training embeddings summarised: class means (C, D), the tied covariance's
    inverse (D, D), and the Ledoit-Wolf shrinkage that made it invertible."""

    means: np.ndarray
    precision: np.ndarray
    shrinkage: float

    def __post_init__(self) -> None:
        means, precision = np.asarray(self.means), np.asarray(self.precision)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"OOD statistics: means {means.shape} and precision "
                             f"{precision.shape} do not fit (want (C, D) and (D, D))")

    @property
    def dim(self) -> int:
        return int(np.asarray(self.means).shape[1])

    def save(self, path) -> None:
        np.savez(path, means=self.means, precision=self.precision,
                 shrinkage=np.float64(self.shrinkage))

    @classmethod
    def load(cls, path) -> "OodStatistics":
        with np.load(path) as data:
            return cls(data["means"], data["precision"], float(data["shrinkage"]))


@dataclass(frozen=True)
class OodCut:
    """The fitted cut: flag when the score is above `cut`. `backed` is False when the held-out
    cases were too few for the stated rate (fewer than `min_cases`): the cut is then the largest
    held-out score and the rate is not guaranteed."""

    cut: float
    false_alarm: float
    cases: int
    held_out_flagged: float  # share of the held-out scores above the cut
    backed: bool = True


@dataclass(frozen=True)
class OodEvaluated:
    """What the clinical report says of the flag: its cut as fitted on held-out images, the
    embedding it reads, and which test images it flags (above the cut, or constant)."""

    cut: OodCut
    layer: str
    test_flagged: np.ndarray  # (N test,) bool

    @property
    def test_share(self) -> float:
        return float(np.mean(self.test_flagged)) if len(self.test_flagged) else float("nan")


def ledoit_wolf(residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance, shrinkage) of already-centred rows, shrunk towards a scaled identity by
    Ledoit and Wolf's (2004) optimal weight (the estimate scikit-learn's `ledoit_wolf` gives
    with assume_centered=True)."""
    x = np.asarray(residuals, dtype=np.float64)
    n, p = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / p
    delta = np.sum((emp - mu * np.eye(p)) ** 2) / p
    x2 = x ** 2
    beta = (np.sum(x2.T @ x2) / n - np.sum((x.T @ x) ** 2) / n ** 2) / (p * n)
    beta = min(max(beta, 0.0), delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return (1.0 - shrinkage) * emp + shrinkage * mu * np.eye(p), float(shrinkage)


def fit_statistics(features: np.ndarray, labels: np.ndarray | None = None) -> OodStatistics:
    """Class means and the shrunk tied covariance of training embeddings (N, D); `labels` (N,)
    class indices, or None for one mean (a task with no class to group by)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"OOD statistics need >= 2 embeddings as (N, D), got {x.shape}")
    y = np.zeros(len(x), dtype=np.int64) if labels is None else np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels {y.shape} do not match {len(x)} embeddings")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, y)]
    covariance, shrinkage = ledoit_wolf(residuals)
    if not np.trace(covariance) > 0:
        raise ValueError("OOD statistics: the training embeddings do not vary (every one is "
                         "its class mean); no distance can be measured")
    return OodStatistics(means, np.linalg.pinv(covariance, hermitian=True), shrinkage)


def mahalanobis(stats: OodStatistics, features: np.ndarray) -> np.ndarray:
    """(N,) distance of each embedding to its nearest class mean."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != stats.dim:
        raise ValueError(f"embeddings {x.shape} do not match statistics of dimension "
                         f"{stats.dim}")
    diff = x[:, None, :] - np.asarray(stats.means)[None, :, :]  # (N, C, D)
    squared = np.einsum("ncd,de,nce->nc", diff, stats.precision, diff)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def min_cases(false_alarm: float) -> int:
    """The fewest held-out scores for which the ceil((n+1)(1-a))-th smallest exists."""
    _check_rate(false_alarm)
    n = 1
    while math.ceil((n + 1) * (1 - false_alarm) - 1e-9) > n:
        n += 1
    return n


def fit_cut(scores: np.ndarray, false_alarm: float = DEFAULT_FALSE_ALARM) -> OodCut:
    """The cut on held-out in-distribution scores at the stated false-alarm rate."""
    _check_rate(false_alarm)
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
        raise ValueError(f"held-out OOD scores must be a non-empty finite (N,) array, got "
                         f"shape {s.shape}")
    n = len(s)
    rank = math.ceil((n + 1) * (1 - false_alarm) - 1e-9)
    backed = rank <= n
    cut = float(s[min(rank, n) - 1])
    return OodCut(cut, float(false_alarm), n, float(np.mean(s > cut)), backed)


def constant_images(images: np.ndarray) -> np.ndarray:
    """(N,) True where an image (N, H, W[, C]) has one value throughout."""
    x = np.asarray(images)
    flat = x.reshape(len(x), -1)
    return (flat == flat[:, :1]).all(axis=1)


def flag(scores: np.ndarray, cut: float, constant: np.ndarray) -> np.ndarray:
    """Out of distribution: above the cut, or a constant image."""
    return (np.asarray(scores) > cut) | np.asarray(constant, dtype=bool)


def combine(scores: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The ensemble's score: its models' scores, weighted as their votes are."""
    if len(scores) != len(weights) or not scores:
        raise ValueError(f"{len(scores)} score arrays for {len(weights)} weights")
    total = sum(weights)
    return sum(w * np.asarray(s, dtype=np.float64) for s, w in zip(scores, weights)) / total


def _check_rate(false_alarm: float) -> None:
    if not 0.0 < false_alarm < 0.5:
        raise ValueError(f"OOD false-alarm rate must be in (0, 0.5), got {false_alarm}")
