"""Options that several command lines share, worded once."""
from __future__ import annotations

import argparse


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow/mlflow.db in the working directory)")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's C++ "
                        "start-up lines, library notices and Python warnings (off by default)")
