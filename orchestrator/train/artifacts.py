"""What a trial leaves behind: its file names and the records it exchanges with its caller.

The one place any module learns a trial's file names (the trainer writes them, the Ray side
reports them, the actor pool and the ensemble read them back). Imports neither Keras nor Ray, so
the sweep driver can name a trial's files without loading TensorFlow.

A trial's output folder:

    best.keras          the best epoch's model, its backbone's preprocessing inside it
    val_probs.npy       that model's validation probabilities (N, C); ensembling never retrains
    val_labels.npy      the validation labels (N,), in the same order
    val_paths.txt       the validation images, one per line, in the same order
    history.csv         one row per epoch
    config.json         the TrialConfig
    inputs.json         task, loss, class weights, split sizes, data fingerprint, synthetic flag
    result.json         the TrialResult, less the history
    checkpoint/         last.keras + state.json + hard links to the best files: resume from here
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.base import Task

BEST_MODEL = "best.keras"
VAL_PROBS = "val_probs.npy"
VAL_LABELS = "val_labels.npy"
VAL_PATHS = "val_paths.txt"
HISTORY = "history.csv"
CONFIG = "config.json"
INPUTS = "inputs.json"
RESULT = "result.json"
CHECKPOINT_DIR = "checkpoint"
# inside CHECKPOINT_DIR
LAST_MODEL = "last.keras"
STATE = "state.json"  # epochs done, best epoch and metric, history
FAULT_MARKER = "fault_injected"  # a checkpoint taken just before an injected fault
BEST_FILES = (BEST_MODEL, VAL_PROBS, VAL_LABELS)  # what a checkpoint carries of the best epoch
CHECKPOINT_FILES = BEST_FILES + (VAL_PATHS,)  # ... and which images those probabilities are of


@dataclass(frozen=True)
class TrialData:
    """What a trial trains and validates on; the test split is deliberately not here."""

    task: Task
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_paths: tuple[str, ...]
    fingerprint: str
    synthetic: bool
    manifest_path: str


@dataclass(frozen=True)
class EpochReport:
    """One epoch's figures; `checkpoint_dir` holds the state to resume after this epoch."""

    epoch: int  # 1-based, epochs completed
    metrics: dict[str, float]
    is_best: bool
    checkpoint_dir: Path


Reporter = Callable[[EpochReport], None]


@dataclass(frozen=True)
class FoldedData:
    """Every non-test image with its fold: what a cross-validation trial slices its fold from.
    Shipped once per resolution; each trial copies only its own training part."""

    task: Task
    x: np.ndarray
    y: np.ndarray
    fold: np.ndarray  # (N,) int, 0..K-1
    paths: tuple[str, ...]
    fingerprint: str
    synthetic: bool
    manifest_path: str

    def trial_data(self, fold: int) -> TrialData:
        """Train on every other fold, validate on `fold` (its out-of-fold predictions)."""
        held = self.fold == fold
        if not held.any():
            raise ValueError(f"fold {fold} holds no images (folds: {sorted(set(self.fold))})")
        return TrialData(task=self.task, x_train=self.x[~held], y_train=self.y[~held],
                         x_val=self.x[held], y_val=self.y[held],
                         val_paths=tuple(p for p, h in zip(self.paths, held) if h),
                         fingerprint=self.fingerprint, synthetic=self.synthetic,
                         manifest_path=self.manifest_path)


@dataclass
class TrialResult:
    config: dict[str, Any]
    metric: str
    mode: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    output_dir: Path
    synthetic: bool
    history: list[dict[str, float]] = field(default_factory=list)
