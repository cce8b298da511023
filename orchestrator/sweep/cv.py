"""Cross-validation of the finalists: its data and its record.

The best `cv_top` search configurations are retrained on the `cv_folds` grouped, stratified
folds of every non-test image: N x K fold trials in the sweep's own Tune experiment, queued by
`staged.StagedSearch` as each finalist becomes certain, resumable like the search, each an MLflow
child run tagged with its configuration and fold. Each fold model predicts the fold it never saw,
so every non-test image gets exactly one out-of-fold prediction per configuration: what the
ensemble then chooses on (`ensemble/build.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from orchestrator import tracking
from orchestrator.cluster import Log
from orchestrator.sweep.trainable import SweepContext
from orchestrator.train.artifacts import FoldedData
from orchestrator.train.config import TrialConfig
from orchestrator.train.trial import load_folded_data


def folded_data(base: TrialConfig, resolutions: Iterable[int], manifest: Path,
                log: Log) -> dict[int, FoldedData]:
    """Every non-test image of the recorded split with its fold, at each resolution a finalist
    may have: decoded once, before any trial, for all the fold trials."""
    return {int(r): load_folded_data(base.replace(resolution=int(r)), manifest, log)
            for r in resolutions}


def cv_table(context: SweepContext) -> pd.DataFrame:
    """The fold trials' runs and how each ended: `cv_runs.csv` of the parent run."""
    runs = tracking.list_trial_runs(context.tracking_uri, context.experiment_id,
                                    context.parent_run_id, kind=tracking.KIND_CV_TRIAL)
    return pd.DataFrame([{"finalist": r.data.tags.get(tracking.TAG_FINALIST),
                          "fold": r.data.tags.get(tracking.TAG_FOLD),
                          "replicate": r.data.tags.get(tracking.TAG_REPLICATE, "0"),
                          "status": r.data.tags.get(tracking.TAG_STATUS)} for r in runs])
