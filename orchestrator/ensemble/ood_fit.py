"""Fit the served model's out-of-distribution flag (`orchestrator.clinical.ood`) once the
members are chosen: each member model's statistics on the images it was trained on, the cut on
held-out images only (never the test split), and the test images' scores for the check that the
logged model answers the same.

Held-out scores: on a holdout split, the validation images scored by every member model; under
cross-validation, each non-test image scored only by the fold model that did not train on it
(one per member, as out-of-fold probabilities are). Serving scores an image with all K fold
models of a member, averaged: a mean of K distances is less spread than one, so the out-of-fold
cut is conservative for images like the training pool (the served false-alarm rate can sit below
the stated one), the same mismatch the out-of-fold temperature and refer cut carry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.clinical import ood
from orchestrator.serving.contract import OodSpec

Log = Callable[[str], None]


@dataclass(frozen=True)
class OodFit:
    spec: OodSpec
    statistics: dict  # member model name -> ood.OodStatistics
    held_out_scores: np.ndarray
    test_scores: np.ndarray
    test_constant: np.ndarray

    def evaluated(self) -> ood.OodEvaluated:
        """The report's view: the cut and the test images the served flag raises."""
        s = self.spec
        return ood.OodEvaluated(
            ood.OodCut(s.cut, s.false_alarm, s.held_out_cases, s.held_out_flagged, s.backed),
            s.layer, ood.flag(self.test_scores, s.cut, self.test_constant))

    def files(self, folder: Path) -> dict[str, Path]:
        """One .npz per member model, keyed as the logged model's artifacts are."""
        from orchestrator.tracking.ensemble_model import ood_artifact

        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, stats in self.statistics.items():
            path = folder / f"{name}.npz"
            stats.save(path)
            out[ood_artifact(name)] = path
        return out


def _training(held, model) -> tuple[np.ndarray, np.ndarray | None]:
    """The images `model` was trained on and their class labels (None for a multi-head task:
    one mean), from the recorded split."""
    prepared = held.data[model.resolution]
    if model.images_key is None:  # holdout: the training split
        rows = prepared.table[prepared.table["split"] == "train"]
    else:  # cross-validation: every non-test image outside its own fold
        pool = prepared.table[prepared.table["split"] != "test"].reset_index(drop=True)
        outside = np.setdiff1d(np.arange(len(pool)), held.positions[model.name])
        rows = pool.iloc[outside]
    images, targets = prepared.rows_arrays(rows)
    return images, None if prepared.task.is_multihead else targets


def fit_ood(held, members, weights, test_images: dict, false_alarm: float,
            layer: str = ood.DEFAULT_LAYER, log: Log = print) -> OodFit:
    """`members`/`weights`: the chosen ensemble's; `test_images`: resolution -> test images."""
    import keras

    from orchestrator.models import classifier  # noqa: F401  (registers BackbonePreprocess)
    from orchestrator.models.embeddings import embeddings

    statistics, held_out, test, first_res = {}, np.zeros(len(held.y)), [], None
    test_weights = []
    for name, weight in zip(members, weights):
        models = held.models[name]
        for model in models:
            keras_model = keras.models.load_model(model.model_path)
            x_train, y_train = _training(held, model)
            stats = ood.fit_statistics(embeddings(keras_model, x_train, layer), y_train)
            statistics[model.name] = stats
            key = model.images_key if model.images_key is not None else model.resolution
            own = ood.mahalanobis(stats, embeddings(keras_model, held.images[key], layer))
            held_out[held.positions[model.name]] += weight * own
            test.append(ood.mahalanobis(stats, embeddings(keras_model,
                                                          test_images[model.resolution],
                                                          layer)))
            test_weights.append(weight / len(models))
            first_res = first_res or model.resolution
    held_out /= sum(weights)
    cut = ood.fit_cut(held_out, false_alarm)
    if not cut.backed:
        log(f"OOD cut: {cut.cases} held-out images are fewer than the "
            f"{ood.min_cases(false_alarm)} a {false_alarm:g} false-alarm rate needs; the cut is "
            "the largest held-out score and the rate is not guaranteed")
    spec = OodSpec(cut=cut.cut, false_alarm=cut.false_alarm, layer=layer,
                   held_out_cases=cut.cases, held_out_flagged=cut.held_out_flagged,
                   backed=cut.backed, scored_on=held.kind)
    return OodFit(spec, statistics, held_out, ood.combine(test, test_weights),
                  ood.constant_images(test_images[first_res]))
