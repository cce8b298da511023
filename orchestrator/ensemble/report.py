"""Files a reviewer reads for the final ensemble's choice: comparison table, per-class report,
the selection trajectory and the policy scores. (The clinical figures, confusion matrix
included, are `orchestrator.clinical`'s.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from tasks.base import Task


def write_reports(table: pd.DataFrame, y_test: np.ndarray, probs: np.ndarray, task: Task,
                  choice, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "comparison.csv", out / "classification_report.csv",
             out / "selection_trajectory.csv", out / "tta_policy_scores.csv"]
    table.to_csv(paths[0], index=False)
    labels = list(range(task.num_classes))
    report = classification_report(y_test, probs.argmax(axis=1), labels=labels,
                                   target_names=list(task.classes), output_dict=True,
                                   zero_division=0)
    pd.DataFrame(report).T.to_csv(paths[1])
    pd.DataFrame(choice.ensemble.trajectory, columns=["added", "val_score"]).to_csv(
        paths[2], index_label="step")
    pd.Series(choice.scores_by_policy, name="val_score").to_csv(paths[3], index_label="policy")
    return paths
