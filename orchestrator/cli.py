"""Options that several command lines share, worded once."""
from __future__ import annotations

import argparse


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow/mlflow.db in the working directory)")
