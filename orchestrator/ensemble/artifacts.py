"""What the ensemble stage leaves in its MLflow run beside the clinical report
(`clinical/artifacts.py`): its file names, the one place any module learns them.

    comparison.csv              held-out and test figures of the ensemble and its baselines
    classification_report[_<head>].csv   per-class precision, recall, F1 on test
    selection_trajectory.csv    Caruana's steps on the held-out predictions
    tta_policy_scores.csv       every TTA policy's held-out score
    scoring.csv                 what the actor pool scored, per candidate
    test_predictions.csv        the served model's answers on every test image (promotion
                                compares two versions on these)
"""
from __future__ import annotations

COMPARISON = "comparison.csv"
CLASSIFICATION_REPORT = "classification_report.csv"
SELECTION_TRAJECTORY = "selection_trajectory.csv"
TTA_POLICY_SCORES = "tta_policy_scores.csv"
SCORING = "scoring.csv"
TEST_PREDICTIONS = "test_predictions.csv"
