"""The final ensemble: pure selection (`selection`), the validation-only choice of TTA policy and
members (`choice`), where its candidates come from (`sources`: holdout or out-of-fold), the
Ray + MLflow build (`build`), the report files and console summary (`report`), the served
model, its card and its registration (`publish`), promotion to champion (`promote`), and the
stage's file names (`artifacts`).

`python -m orchestrator.ensemble --sweep-run RUN_ID` redoes the build for an existing sweep.
"""
from orchestrator.ensemble.selection import (Ensemble, Scorer, best_single, caruana_select,
                                             task_scorer, top_k_soft_vote)

__all__ = ["Ensemble", "Scorer", "best_single", "caruana_select", "task_scorer",
           "top_k_soft_vote"]
