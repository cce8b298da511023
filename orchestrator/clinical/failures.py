"""The failure gallery: the test images the ensemble got wrong with the highest confidence,
each with Grad-CAM. Low-confidence cases are referred to a person (the review list); confident
errors are not, so they are the ones a reader must see."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

GALLERY_FILE = "failure_gallery.png"
GALLERY_CASES = 6


def worst_errors(y: np.ndarray, decision: np.ndarray, confidence: np.ndarray,
                 n: int = GALLERY_CASES) -> np.ndarray:
    """Indices of the `n` wrong decisions with the highest confidence, highest first (ties in
    test order, so the gallery is the same each run)."""
    wrong = np.flatnonzero(np.asarray(decision) != np.asarray(y))
    order = np.argsort(-np.asarray(confidence, dtype=np.float64)[wrong], kind="stable")
    return wrong[order][:n]


def failure_gallery(model, images: np.ndarray, y: np.ndarray, decision: np.ndarray,
                    confidence: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                    out: Path, n: int = GALLERY_CASES) -> tuple[Path | None, int]:
    """The gallery figure and how many errors it shows (None, 0: no error). The Grad-CAM is
    `model`'s for the class the ensemble decided: what pulled towards the wrong answer."""
    from orchestrator.clinical import plots
    from orchestrator.clinical.gradcam import gradcam, overlay

    picked = worst_errors(y, decision, confidence, n)
    if not len(picked):
        return None, 0
    maps = gradcam(model, images[picked], np.asarray(decision)[picked])
    captions = [f"{Path(paths[i]).name}\ntrue {classes[y[i]]}, decided {classes[decision[i]]} "
                f"({confidence[i]:.2f})" for i in picked]
    figure = plots.image_grid([overlay(images[i], m) for i, m in zip(picked, maps)], captions,
                              out / GALLERY_FILE, "Most confident test errors (Grad-CAM of the "
                              "decided class)", columns=min(3, len(picked)),
                              row_inches=3.6)
    return figure, len(picked)
