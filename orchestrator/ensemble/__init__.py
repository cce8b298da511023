"""The final ensemble: pure selection (`selection`), the validation-only choice of TTA policy and
members (`choice`), the report files (`report`) and the Ray + MLflow build (`build`).

`python -m orchestrator.ensemble --sweep-run RUN_ID` redoes the build for an existing sweep.
"""
from orchestrator.ensemble.selection import (Ensemble, Scorer, best_single, caruana_select,
                                             task_scorer, top_k_soft_vote)

__all__ = ["Ensemble", "Scorer", "best_single", "caruana_select", "task_scorer",
           "top_k_soft_vote"]
