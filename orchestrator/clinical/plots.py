"""The report's figures, as PNG files (matplotlib, headless). Each function writes one file and
returns its path; curves and matrices come from scikit-learn."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (ConfusionMatrixDisplay, PrecisionRecallDisplay,  # noqa: E402
                             RocCurveDisplay)

from orchestrator.clinical.calibration import reliability_bins  # noqa: E402
from orchestrator.clinical.operating_point import binary_figures  # noqa: E402
from tasks.base import positive_column  # noqa: E402

DPI = 150
MIN_WIDTH_PX = 1000  # legends and tick labels stay legible at full width


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=max(DPI, int(np.ceil(MIN_WIDTH_PX / fig.get_figwidth()))))
    plt.close(fig)
    return path


def confusion_matrices(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: Path,
                       title: str) -> Path:
    """Counts and row-normalised (each true class sums to 1: per-class recall on the diagonal)."""
    size = 3.2 + 0.6 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    labels = list(range(len(classes)))
    for ax, normalize, name in ((axes[0], None, "counts"), (axes[1], "true", "row-normalised")):
        ConfusionMatrixDisplay.from_predictions(
            y, pred, labels=labels, display_labels=list(classes), normalize=normalize, ax=ax,
            colorbar=False, values_format="d" if normalize is None else ".2f")
        ax.set_title(f"{title}: {name}")
    return _save(fig, path)


def roc_pr_curves(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path, *,
                  positive_index: int | None = None, threshold: float | None = None,
                  title: str = "") -> Path:
    """ROC and PR curves; binary: the positive class with the operating point marked;
    multiclass: one curve per class, one-vs-rest."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    if probs.shape[1] == 2:
        pos = positive_column(positive_index)
        truth, scores = y == pos, probs[:, pos]
        RocCurveDisplay.from_predictions(truth, scores, ax=roc, name=classes[pos])
        PrecisionRecallDisplay.from_predictions(truth, scores, ax=pr, name=classes[pos])
        if threshold is not None:
            f = binary_figures(truth, scores, threshold)
            label = f"operating point (threshold {threshold:.3f})"
            roc.plot(1 - f["specificity"], f["sensitivity"], "o", color="crimson", label=label)
            pr.plot(f["sensitivity"], f["ppv"], "o", color="crimson", label=label)
    else:
        for k, name in enumerate(classes):
            if 0 < np.sum(y == k) < len(y):
                RocCurveDisplay.from_predictions(y == k, probs[:, k], ax=roc, name=name)
                PrecisionRecallDisplay.from_predictions(y == k, probs[:, k], ax=pr, name=name)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set_title(f"{title} ROC")
    pr.set_title(f"{title} precision-recall")
    roc.legend(loc="lower right", fontsize=8)
    pr.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def reliability_diagram(y: np.ndarray, before: np.ndarray, after: np.ndarray | None,
                        path: Path, *, temperature: float | None, n_bins: int = 15,
                        title: str = "", before_name: str = "ensemble") -> Path:
    """Top-label accuracy against confidence, before and (`after` given) after temperature
    scaling."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    curves = [(before, before_name, "o-")]
    if after is not None:
        curves.append((after, f"temperature scaled (T={temperature:.2f})", "s-"))
    for probs, name, marker in curves:
        bins = reliability_bins(y, probs, n_bins)
        filled = bins["count"] > 0
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], marker, label=name)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def regression_scatter(y: np.ndarray, pred: np.ndarray, path: Path, *, unit: str = "",
                       title: str = "") -> Path:
    """A regression head's predicted against true values, with the identity line (a perfect
    prediction), both axes in the head's unit."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    finite = np.concatenate([y, pred])
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    pad = 0.05 * (high - low) or 1.0
    ax.plot([low - pad, high + pad], [low - pad, high + pad], ":", color="grey",
            label="identity (perfect prediction)")
    ax.scatter(y, pred, s=14, alpha=0.7, color="steelblue", label="test cases")
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"true{suffix}")
    ax.set_ylabel(f"predicted{suffix}")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_title(f"{title}: predicted vs true")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def training_curves(history: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    """Per-epoch loss (train and validation) and the task's metric; `history` has columns
    step, key, value (one row per logged point)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, keys in ((left, ("loss", "val_loss")), (right, (metric,))):
        for key in keys:
            rows = history[history["key"] == key].sort_values("step")
            if len(rows):
                ax.plot(rows["step"], rows["value"], "o-", label=key)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    left.set_title(f"{title}: loss")
    right.set_title(f"{title}: {metric}")
    return _save(fig, path)


def _metric_name(column: str) -> str:
    """`best_val_accuracy` -> `accuracy`: the leaderboard's column, as a reader names it."""
    for prefix in ("best_", "val_"):
        column = column.removeprefix(prefix)
    return column.replace("_", " ")


def trial_comparison(board: pd.DataFrame, metric: str, path: Path, members: Sequence[str] = (),
                     ) -> Path:
    """Every trial's best validation metric, best first; ensemble members highlighted."""
    board = board.sort_values(metric, ascending=True)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(board)))
    colors = ["crimson" if t in members else "steelblue" for t in board["trial"]]
    ax.barh(board["label"], board[metric], color=colors)
    ax.set_xlabel(f"{_metric_name(metric)}, best epoch (validation)")
    ax.set_title("trials (red: in the ensemble)")
    return _save(fig, path)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, title: str,
               columns: int = 4, row_inches: float = 3.2) -> Path:
    """uint8 RGB images with captions, `columns` per row (taller rows for longer captions)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, row_inches * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
