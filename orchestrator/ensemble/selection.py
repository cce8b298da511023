"""Choose ensemble members and weights from validation probabilities only.

Ensembles are often picked by looking at the test set; here every choice is made on
validation (N, C) probabilities, and nothing in this module ever sees test data. Pure numpy:
the caller scores the candidates (Ray, TTA) and records the result (MLflow).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from orchestrator.metrics import is_better, log_loss, primary_metric, task_loss
from tasks.base import Task

Scorer = Callable[[np.ndarray, np.ndarray], float]  # (y_true, probs) -> score
MODES = ("max", "min")
_WEIGHT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Ensemble:
    """Members with aligned weights, and how they were chosen; `trajectory` only for Caruana."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    score: float
    method: str
    trajectory: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"ensemble members repeat: {self.members}")
        if len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        if min(self.weights) < 0 or abs(sum(self.weights) - 1.0) > _WEIGHT_TOLERANCE:
            raise ValueError(f"weights must be non-negative and sum to 1, got {self.weights}")

    def predict(self, probs_by_name: Mapping[str, np.ndarray]) -> np.ndarray:
        """Weighted mean of the members' (N, C) probabilities; other names are ignored."""
        missing = [m for m in self.members if m not in probs_by_name]
        if missing:
            raise ValueError(f"no probabilities for ensemble members {missing}")
        stack = _stack({m: probs_by_name[m] for m in self.members})
        return np.tensordot(np.asarray(self.weights), stack, axes=1)


@dataclass(frozen=True)
class TaskScorer:
    """The task's primary metric (called as a Scorer), and the loss that breaks its ties, so
    selection scores as the trainer does, for one head or several."""

    task: Task

    def __call__(self, y_true: np.ndarray, probs: np.ndarray) -> float:
        return primary_metric(y_true, probs, self.task)

    def loss(self, y_true: np.ndarray, probs: np.ndarray) -> float:
        return task_loss(y_true, probs, self.task)


def task_scorer(task: Task) -> tuple[Scorer, str]:
    """The task's primary metric and its mode, so selection scores as the trainer does."""
    return TaskScorer(task), task.mode


def _tie_loss(scorer: Scorer) -> Callable[[np.ndarray, np.ndarray], float]:
    """The loss that breaks a scorer's ties: its own (`TaskScorer.loss`), else the log loss."""
    return getattr(scorer, "loss", log_loss)


def best_single(probs_by_name: Mapping[str, np.ndarray], y: np.ndarray, scorer: Scorer,
                mode: str) -> Ensemble:
    """The best candidate alone: the baseline every ensemble must beat (ties: name order)."""
    ranked, scores = _ranked_candidates(probs_by_name, y, scorer, mode)
    name = ranked[0]
    return Ensemble(members=(name,), weights=(1.0,), score=scores[name], method="best_single")


def top_k_soft_vote(probs_by_name: Mapping[str, np.ndarray], y: np.ndarray, scorer: Scorer,
                    mode: str, k: int = 2) -> Ensemble:
    """Equal-weight mean of the k best singles (top-2 soft voting for k=2), as a baseline."""
    ranked, _ = _ranked_candidates(probs_by_name, y, scorer, mode)
    if not 1 <= k <= len(ranked):
        raise ValueError(f"k={k} must be between 1 and the {len(ranked)} usable candidate(s)")
    members = tuple(ranked[:k])
    probs = np.mean(_stack({m: probs_by_name[m] for m in members}), axis=0)
    return Ensemble(members=members, weights=(1.0 / k,) * k,
                    score=float(scorer(_labels(y), probs)), method=f"top{k}_soft_vote")


def caruana_select(probs_by_name: Mapping[str, np.ndarray], y: np.ndarray, scorer: Scorer,
                   mode: str, *, max_iterations: int = 25, init_size: int = 1,
                   max_members: int | None = None) -> Ensemble:
    """Greedy forward selection with replacement (Caruana et al. 2004).

    Starts from the `init_size` best singles, then adds, `max_iterations` times, the candidate
    whose addition scores best (ties: one already in, then name order); weights are selection
    counts. It runs every iteration (a plateau can be left later), then returns the best point
    of the trajectory from the full start on; on ties the earliest, which has the fewest
    distinct members, so a model that only matches the score is never kept. The trajectory
    also lists the start, each entry scored as the ensemble after it.
    """
    _check_caruana_args(max_iterations, init_size, max_members)
    ranked, _ = _ranked_candidates(probs_by_name, y, scorer, mode)
    if init_size > len(ranked):
        raise ValueError(f"init_size={init_size} exceeds the {len(ranked)} usable candidate(s)")
    labels = _labels(y)
    names = sorted(ranked)
    stack = _stack({n: probs_by_name[n] for n in names})
    cap = len(names) if max_members is None else max_members

    counts = np.zeros(len(names), dtype=int)
    running = np.zeros(stack.shape[1:])
    trajectory: list[tuple[str, float]] = []
    points: list[tuple[np.ndarray, float]] = []
    order: list[int] = []  # candidate indices in order of first selection
    for step in range(init_size + max_iterations):
        if step < init_size:
            pick = names.index(ranked[step])
            score = float(scorer(labels, (running + stack[pick]) / (counts.sum() + 1)))
        else:
            found = _best_addition(stack, running, counts, labels, scorer, mode, cap)
            if found is None:
                break
            pick, score = found
        if counts[pick] == 0:
            order.append(pick)
        counts[pick] += 1
        running += stack[pick]
        trajectory.append((names[pick], score))
        if step >= init_size - 1:
            points.append((counts.copy(), score,
                           _tie_loss(scorer)(labels, running / counts.sum())))
    chosen_counts, score = _best_point(points, mode)
    members = [i for i in order if chosen_counts[i] > 0]
    total = chosen_counts.sum()
    return Ensemble(members=tuple(names[i] for i in members),
                    weights=tuple(float(chosen_counts[i] / total) for i in members),
                    score=score, method="caruana", trajectory=tuple(trajectory))


def _best_addition(stack: np.ndarray, running: np.ndarray, counts: np.ndarray, labels: np.ndarray,
                   scorer: Scorer, mode: str, cap: int) -> tuple[int, float] | None:
    """The candidate whose addition scores best, or None when no addition has a finite score.

    All M trial ensembles come from one broadcast over the running sum; a candidate outside the
    ensemble is tried only while there is room for another distinct member.
    """
    inside = counts > 0
    allowed = inside | (inside.sum() < cap)
    trials = (running[None] + stack) / (counts.sum() + 1)
    best: tuple[int, float, float] | None = None
    # Members first, then outsiders, each in name order: a strict improvement (in the score,
    # or in log-loss at an equal score) is needed to displace an earlier one: the tie rule.
    for i in [*np.flatnonzero(inside & allowed), *np.flatnonzero(~inside & allowed)]:
        score = float(scorer(labels, trials[i]))
        loss = _tie_loss(scorer)(labels, trials[i])
        if best is None or _better(score, loss, best[1], best[2], mode):
            best = (int(i), score, loss)
    return None if best is None or math.isnan(best[1]) else (best[0], best[1])


def _best_point(points: list[tuple[np.ndarray, float, float]],
                mode: str) -> tuple[np.ndarray, float]:
    """The earliest best point: the best score, ties broken by the lower loss. Members only
    accumulate along the trajectory, so on a full tie the earliest point is also the one with
    the fewest distinct members."""
    best_counts, best_score, best_loss = points[0]
    for counts, score, loss in points[1:]:
        if _better(score, loss, best_score, best_loss, mode):
            best_counts, best_score, best_loss = counts, score, loss
    return best_counts, best_score


def _better(score: float, loss: float, best_score: float, best_loss: float, mode: str) -> bool:
    """A better score, or the same score (to 1e-12) with a loss lower by more than 1e-9 (the
    scorer's `loss`: the log loss for one head, `metrics.task_loss` for several):
    on a small held-out set many candidates tie on accuracy, and the better-calibrated one is
    then the better choice."""
    if math.isnan(score):
        return False
    if math.isnan(best_score) or abs(score - best_score) > 1e-12:
        return is_better(score, best_score, mode)
    return loss < best_loss - 1e-9


def _ranked_candidates(probs_by_name: Mapping[str, np.ndarray], y: np.ndarray, scorer: Scorer,
                       mode: str) -> tuple[list[str], dict[str, float]]:
    """Usable candidates best first (ties: name order) and their single-model scores."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    labels = _labels(y)
    stack = _stack(probs_by_name, len(labels))
    scores = {}
    for name, probs in zip(probs_by_name, stack):
        score = _single_score(name, probs, labels, scorer)
        if score is not None:
            scores[name] = score
    if not scores:
        raise ValueError(f"no candidate has a finite validation score: {sorted(probs_by_name)}")
    sign = -1.0 if mode == "max" else 1.0
    losses = {name: _tie_loss(scorer)(labels, probs)
              for name, probs in zip(probs_by_name, stack)}
    ranked = sorted(scores, key=lambda n: (sign * scores[n], round(losses[n], 9), n))
    return ranked, scores


def _single_score(name: str, probs: np.ndarray, labels: np.ndarray, scorer: Scorer) -> float | None:
    """A candidate's own score, or None (with a warning) when it cannot take part."""
    if not np.isfinite(probs).all():
        warnings.warn(f"skipping candidate {name!r}: its probabilities are not all finite",
                      RuntimeWarning, stacklevel=4)
        return None
    score = float(scorer(labels, probs))
    if math.isnan(score):
        warnings.warn(f"skipping candidate {name!r}: its validation score is NaN",
                      RuntimeWarning, stacklevel=4)
        return None
    return score


def _labels(y: np.ndarray) -> np.ndarray:
    """Class indices (N,), or a multi-head task's (N, H) targets (`orchestrator.models.heads`)."""
    labels = np.asarray(y)
    if labels.ndim not in (1, 2) or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty (N,) or (N, heads) array, got shape "
                         f"{labels.shape}")
    return labels.astype(int) if labels.ndim == 1 else labels.astype(np.float64)


def _stack(probs_by_name: Mapping[str, np.ndarray], n_labels: int | None = None) -> np.ndarray:
    """(M, N, C) array in the mapping's order; every candidate must share one (N, C) shape."""
    if not probs_by_name:
        raise ValueError("no candidate probabilities given")
    arrays = {name: np.asarray(p, dtype=np.float64) for name, p in probs_by_name.items()}
    first_name, first = next(iter(arrays.items()))
    if first.ndim != 2 or (n_labels is not None and first.shape[0] != n_labels):
        expected = f"({n_labels}, C)" if n_labels is not None else "(N, C)"
        raise ValueError(f"candidate {first_name!r} has probabilities of shape {first.shape}, "
                         f"expected {expected}")
    for name, probs in arrays.items():
        if probs.shape != first.shape:
            raise ValueError(f"candidate {name!r} has probabilities of shape {probs.shape}, "
                             f"but {first_name!r} has {first.shape}")
    return np.stack(list(arrays.values()))


def _check_caruana_args(max_iterations: int, init_size: int, max_members: int | None) -> None:
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    if init_size < 1:
        raise ValueError(f"init_size must be >= 1, got {init_size}")
    if max_members is not None and max_members < init_size:
        raise ValueError(f"max_members={max_members} is below init_size={init_size}")
