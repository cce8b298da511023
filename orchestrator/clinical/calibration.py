"""Temperature scaling (Guo et al. 2017) fitted on validation, and how calibrated probabilities
are: Brier score, expected calibration error, reliability bins.

The ensemble outputs probabilities, not logits; log-probabilities are logits up to a constant per
case, which softmax ignores, so softmax(log p / T) is temperature scaling of the ensemble.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

EPS = 1e-12
T_BOUNDS = (0.05, 20.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident probabilities, T < 1 sharpens."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p = np.clip(np.asarray(probs)[np.arange(len(y)), np.asarray(y, dtype=int)], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def fit_temperature(y_val: np.ndarray, val_probs: np.ndarray) -> float:
    """The T in T_BOUNDS that minimises validation NLL (bounded scalar search on log T)."""
    y = np.asarray(y_val, dtype=int)
    result = minimize_scalar(lambda log_t: nll(y, apply_temperature(val_probs, np.exp(log_t))),
                             bounds=tuple(np.log(T_BOUNDS)), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def brier_score(y: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's `brier_score_loss(y, probs, labels=...)`, in numpy (it runs a thousand
    times in a bootstrap): mean over cases of the sum over classes of (p - onehot)^2, halved for
    two classes so that it is the usual binary Brier score of the positive class."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(y, dtype=int)]
    total = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return total / 2.0 if p.shape[1] == 2 else total


def binary_brier(y: np.ndarray, positive_scores: np.ndarray) -> float:
    """The usual binary Brier score, via scikit-learn."""
    return float(skm.brier_score_loss(np.asarray(y).astype(int), positive_scores))


def reliability_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence in equal-width bins: per bin the count, mean confidence, accuracy."""
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y, dtype=int)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, confidence, minlength=n_bins) / count
        acc = np.bincount(which, correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": conf, "accuracy": acc}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Sum over bins of (bin share of cases) x |accuracy - mean confidence|, top-label."""
    bins = reliability_bins(y, probs, n_bins)
    filled = bins["count"] > 0
    share = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(share * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def confidence_gap(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Case-weighted mean over the reliability bins of (mean confidence - accuracy): above 0
    the probabilities are over-confident (the curve runs below the diagonal), below 0
    under-confident (above it)."""
    bins = reliability_bins(y, probs, n_bins)
    filled = bins["count"] > 0
    share = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(share * (bins["confidence"][filled] - bins["accuracy"][filled])))


def _direction(gap: float, tolerance: float) -> str:
    if gap > tolerance:
        return "over-confident"
    if gap < -tolerance:
        return "under-confident"
    return "close to calibrated"


def calibration_sentence(temperature: float, held_out: str, test_gap_before: float,
                         test_gap_after: float, tolerance: float = 0.02) -> str:
    """What the fitted T and the test reliability bins say, in words derived from the numbers
    (the same bins the reliability diagram draws), so the text cannot contradict the curve."""
    if temperature > 1.0 + 1e-3:
        fitted = (f"T = {temperature:.3f} > 1: on the {held_out} predictions the ensemble was "
                  "over-confident, so scaling softens its probabilities")
    elif temperature < 1.0 - 1e-3:
        fitted = (f"T = {temperature:.3f} < 1: on the {held_out} predictions the ensemble was "
                  "under-confident, so scaling sharpens its probabilities")
    else:
        fitted = f"T = {temperature:.3f}: the {held_out} predictions were already calibrated"
    before, after = _direction(test_gap_before, tolerance), _direction(test_gap_after, tolerance)
    curve = {"over-confident": "the curve runs below the diagonal",
             "under-confident": "the curve runs above the diagonal",
             "close to calibrated": "the curve follows the diagonal"}[before]
    return (f"Temperature scaling fitted on {held_out} predictions: {fitted}. On test, mean "
            f"confidence minus accuracy across the reliability bins is {test_gap_before:+.3f} "
            f"before scaling ({before}: {curve}) and {test_gap_after:+.3f} after ({after}).")
