"""How unsure the ensemble is about each case: predictive entropy, optionally under Monte Carlo
dropout (Gal and Ghahramani 2016); the least confident test cases for a person to review are
listed by `heads.review_table`.

MC dropout here keeps every normalisation layer in inference mode and samples only the head's
dropout: the backbone's features are computed once, then the small head runs `passes` times.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

EPS = 1e-12


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of (N, C) probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def mc_dropout_probs(model, images: np.ndarray, passes: int, *, batch_size: int = 64,
                     seed: int = 0) -> np.ndarray:
    """(passes, N, C) probabilities with the head's dropout on (backbone in inference mode).

    The dropout masks are drawn from a stateless generator keyed by (seed, batch, pass), so the
    same call gives the same samples (a Keras Dropout layer's own generator keeps its state)."""
    import tensorflow as tf

    from orchestrator.models.classifier import head_inputs

    if passes < 1:
        raise ValueError(f"MC-dropout passes must be >= 1, got {passes}")
    rate = float(model.get_layer("head_dropout").rate)
    out = []
    for b, start in enumerate(range(0, len(images), batch_size)):
        x = tf.convert_to_tensor(np.asarray(images[start:start + batch_size], dtype=np.float32))
        features = model.get_layer("backbone")(model.get_layer("preprocess")(x), training=False)
        dense = model.get_layer("head_dense")(head_inputs(model, features, x))
        samples = []
        for k in range(passes):
            keep = tf.random.stateless_uniform(tf.shape(dense), seed=(seed, b * passes + k)) \
                >= rate
            dropped = tf.where(keep, dense / (1.0 - rate), tf.zeros_like(dense))
            logits = model.get_layer("logits")(dropped)
            samples.append(tf.nn.softmax(tf.cast(logits, tf.float32)).numpy())
        out.append(np.stack(samples))
    return np.concatenate(out, axis=1)


def ensemble_mc(per_member: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted mean over members of (passes, N, C) samples, pass by pass."""
    return sum(weights[m] * p for m, p in per_member.items())


def mc_summary(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Predictive entropy of the mean, expected entropy, and their difference (the mutual
    information: the part of the uncertainty that is the model's, not the data's)."""
    mean = samples.mean(axis=0)
    predictive = entropy(mean)
    expected = entropy(samples).mean(axis=0)
    return {"mean": mean, "predictive_entropy": predictive,
            "mutual_information": np.maximum(predictive - expected, 0.0)}
