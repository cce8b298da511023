"""Files a clinician or reviewer reads for the final ensemble: comparison table, confusion
matrix, per-class report, the selection trajectory and the policy scores."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, classification_report  # noqa: E402

from tasks.base import Task  # noqa: E402


def write_reports(table: pd.DataFrame, y_test: np.ndarray, probs: np.ndarray, task: Task,
                  choice, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "comparison.csv", out / "classification_report.csv",
             out / "confusion_matrix.png", out / "selection_trajectory.csv",
             out / "tta_policy_scores.csv"]
    table.to_csv(paths[0], index=False)
    labels = list(range(task.num_classes))
    report = classification_report(y_test, probs.argmax(axis=1), labels=labels,
                                   target_names=list(task.classes), output_dict=True,
                                   zero_division=0)
    pd.DataFrame(report).T.to_csv(paths[1])
    fig, ax = plt.subplots(figsize=(4 + task.num_classes, 3.5 + task.num_classes))
    ConfusionMatrixDisplay.from_predictions(y_test, probs.argmax(axis=1), labels=labels,
                                            display_labels=list(task.classes), ax=ax,
                                            colorbar=False)
    ax.set_title(f"{task.key}: test confusion matrix (ensemble)")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    pd.DataFrame(choice.ensemble.trajectory, columns=["added", "val_score"]).to_csv(
        paths[3], index_label="step")
    pd.Series(choice.scores_by_policy, name="val_score").to_csv(paths[4], index_label="policy")
    return paths
