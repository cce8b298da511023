"""What the clinical evaluation leaves in the ensemble run: its file names, the one place any
module learns them (the evaluators write them, the report's sentences name them).

    report.html                 the whole report, figures embedded
    test_metrics_with_ci.csv    every model's test figures with 95% bootstrap intervals
    threshold_table.csv         a binary task's sensitivity / specificity trade-off
    review_low_confidence.csv   the least confident test cases, for a person to look at
    test_metrics_per_patient.csv, review_per_patient.csv, confusion_matrix_per_patient[_<head>].png
                                the same per group (patient, lesion) where groups hold several
    test_metrics_by_subgroup.csv each --subgroup value's test figures, intervals and flag
    confusion_matrix[_<head>].png, roc_pr_curves.png, reliability_diagram[_<head>].png,
    scatter_<head>.png, trial_comparison.png, gradcam_<class>.png
"""
from __future__ import annotations

REPORT = "report.html"
TEST_METRICS = "test_metrics_with_ci.csv"
THRESHOLD_TABLE = "threshold_table.csv"
REVIEW = "review_low_confidence.csv"
CONFUSION_MATRIX = "confusion_matrix.png"
ROC_PR_CURVES = "roc_pr_curves.png"
RELIABILITY_DIAGRAM = "reliability_diagram.png"
TRIAL_COMPARISON = "trial_comparison.png"
SCATTER = "scatter.png"  # a regression head's predicted against true, per head
TEST_METRICS_PER_PATIENT = "test_metrics_per_patient.csv"
REVIEW_PER_PATIENT = "review_per_patient.csv"
CONFUSION_MATRIX_PER_PATIENT = "confusion_matrix_per_patient.png"
TEST_METRICS_BY_SUBGROUP = "test_metrics_by_subgroup.csv"


def per_head(name: str, head: str) -> str:
    """`confusion_matrix.png` of head `shape` -> `confusion_matrix_shape.png`."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_{head}{dot}{suffix}"
