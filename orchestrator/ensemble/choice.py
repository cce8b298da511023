"""Choosing TTA policy, members and weights from validation probabilities alone.

`choose` never receives test data: whatever the test labels are, the choice is the same. The
test set only enters `comparison_rows`, after the choice is fixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.ensemble.selection import (Ensemble, best_single, caruana_select, task_scorer,
                                              top_k_soft_vote)
from orchestrator.metrics import classification_metrics, is_better
from orchestrator.tta.policies import NamedTransform, policy_mean
from tasks.base import Task


@dataclass(frozen=True)
class Choice:
    policy: str
    ensemble: Ensemble  # Caruana selection under `policy`
    best_single: Ensemble
    top2: Ensemble
    val_probs: Mapping[str, np.ndarray]  # every candidate's (N, C) under `policy`
    scores_by_policy: Mapping[str, float]

    @property
    def test_members(self) -> set[str]:
        return set(self.ensemble.members) | set(self.best_single.members) | set(self.top2.members)


def choose(per_transform: Mapping[str, np.ndarray], transforms: Sequence[NamedTransform],
           by_policy: Mapping[str, Sequence[NamedTransform]], y_val: np.ndarray, task: Task, *,
           max_iterations: int = 25) -> Choice:
    """Caruana selection under each policy; the policy whose ensemble scores best on validation
    wins, ties going to the policy listed first (the cheaper one)."""
    scorer, mode = task_scorer(task)
    best: Choice | None = None
    scores: dict[str, float] = {}
    finite = {n: p for n, p in per_transform.items() if np.isfinite(p).all()}
    if not finite:
        raise ValueError("every candidate produced non-finite probabilities")
    for policy, members in by_policy.items():
        probs = {n: policy_mean(p, transforms, members) for n, p in finite.items()}
        ensemble = caruana_select(probs, y_val, scorer, mode, max_iterations=max_iterations)
        scores[policy] = ensemble.score
        if best is None or is_better(ensemble.score, best.ensemble.score, mode):
            best = Choice(policy, ensemble, best_single(probs, y_val, scorer, mode),
                          top_k_soft_vote(probs, y_val, scorer, mode, k=min(2, len(probs))),
                          probs, scores)
    assert best is not None
    return Choice(best.policy, best.ensemble, best.best_single, best.top2, best.val_probs,
                  dict(scores))


def comparison_rows(choice: Choice, y_val: np.ndarray, test_probs: Mapping[str, np.ndarray],
                    y_test: np.ndarray, task: Task) -> pd.DataFrame:
    """Validation and test figures, side by side, for the ensemble and its baselines."""
    rows = []
    for label, ens in (("ensemble", choice.ensemble), ("best_single", choice.best_single),
                       ("top2_soft_vote", choice.top2)):
        val = classification_metrics(y_val, ens.predict(choice.val_probs), task)
        test = classification_metrics(y_test, ens.predict(test_probs), task)
        rows.append({"model": label, "members": " + ".join(ens.members),
                     **{f"val_{k}": v for k, v in val.items()},
                     **{f"test_{k}": v for k, v in test.items()}})
    return pd.DataFrame(rows)
