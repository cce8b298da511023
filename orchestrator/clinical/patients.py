"""One answer per patient: how the calibrated probabilities of a group's images (a patient's
views, a lesion's photographs, a smear's cells) combine into one, what the group's label is,
and which combination rule the held-out groups support.

Pure numpy. A group is whatever the data table's `group` column holds (a singleton group is
one image); the rules are a small registry (`RULES`):

- `mean`: the images' probabilities averaged, class by class.
- `max`: each class's largest probability over the images, the row then renormalised to sum
  to 1 (for two classes: the most alarming view of each class, weighed against each other).

The rule is chosen on held-out groups only (`choose_rule`), by the log loss of the group
probabilities against the group labels: a proper score, so it rewards the probabilities the
served per-group answer returns, not only the decision, and it separates rules on the few
groups a held-out split has where accuracy would tie. Ties go to `mean` (listed first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from orchestrator.errors import ConfigError
from orchestrator.metrics import log_loss


@dataclass(frozen=True)
class Groups:
    """Which group each image belongs to: `names` in order of first appearance, `index` the
    position of each image's group in `names`."""

    names: np.ndarray  # (G,)
    index: np.ndarray  # (N,) ints in [0, G)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.index, minlength=len(self.names))

    @property
    def several(self) -> bool:
        """Some group holds more than one image (else per group is per image)."""
        return bool(len(self.names) < len(self.index))

    def members(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.index == g)


def group_index(groups) -> Groups:
    """The groups of N images, from any (N,) array of group ids."""
    index, names = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), sort=False)
    if (index < 0).any():
        raise ValueError("an image has no group (None or NaN)")
    return Groups(np.asarray(names, dtype=object), index.astype(np.int64))


def group_mean(probs: np.ndarray, groups: Groups) -> np.ndarray:
    """(N, C) -> (G, C): the mean of each group's rows."""
    probs = np.asarray(probs, dtype=np.float64)
    sums = np.zeros((len(groups.names), probs.shape[1]))
    np.add.at(sums, groups.index, probs)
    return sums / groups.sizes[:, None]


def group_max(probs: np.ndarray, groups: Groups) -> np.ndarray:
    """(N, C) -> (G, C): each class's largest probability in the group, rows renormalised."""
    probs = np.asarray(probs, dtype=np.float64)
    top = np.full((len(groups.names), probs.shape[1]), -np.inf)
    np.maximum.at(top, groups.index, probs)
    return top / top.sum(axis=1, keepdims=True)


RULES: Mapping[str, Callable[[np.ndarray, Groups], np.ndarray]] = {"mean": group_mean,
                                                                     "max": group_max}
DEFAULT_RULE = "mean"  # what a model with no recorded rule uses: the simpler one


def get_rule(name: str) -> Callable[[np.ndarray, Groups], np.ndarray]:
    if name not in RULES:
        raise ConfigError(f"unknown group rule {name!r}; valid: {', '.join(RULES)}")
    return RULES[name]


def combine(probs: np.ndarray, groups: Groups, rule: str) -> np.ndarray:
    """(N, C) calibrated image probabilities -> (G, C) group probabilities by `rule`."""
    return get_rule(rule)(probs, groups)


@dataclass(frozen=True)
class GroupLabels:
    labels: np.ndarray  # (G,) class indices
    mixed: tuple = ()  # names of the groups whose images carry different labels


def group_labels(y: np.ndarray, groups: Groups, positive: int | None = None) -> GroupLabels:
    """A group's label is its images' label. Where they differ (flagged in `mixed`): with a
    positive class (binary), positive if any image is, as a clinician would call the patient;
    else the most frequent label, ties to the class listed first."""
    y = np.asarray(y, dtype=np.int64)
    labels, mixed = np.empty(len(groups.names), dtype=np.int64), []
    for g in range(len(groups.names)):
        own = y[groups.members(g)]
        if (own != own[0]).any():
            mixed.append(groups.names[g])
        labels[g] = (positive if positive is not None and (own == positive).any()
                     else int(np.bincount(own).argmax()))
    return GroupLabels(labels, tuple(mixed))


def mean_values(values: np.ndarray, groups: Groups) -> np.ndarray:
    """(N,) or (N, K) values -> the mean per group (a regression head's value and truth)."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    return group_mean(flat, groups).reshape((len(groups.names),) + values.shape[1:])


@dataclass(frozen=True)
class RuleChoice:
    """The rule chosen on held-out groups, and what backs it."""

    rule: str
    scores: Mapping[str, float] = field(default_factory=dict)  # held-out group log loss by rule
    groups: int = 0
    images: int = 0
    mixed: tuple = ()  # held-out groups with mixed labels

    @property
    def evidence(self) -> bool:
        """The held-out groups could tell rules apart (some group holds several images)."""
        return self.groups < self.images

    def sentence(self, held: str) -> str:
        if not self.evidence:
            return (f"every {held} group is one image, so no rule could be chosen: "
                    f"images are combined by their {self.rule} (the default)")
        scores = ", ".join(f"{k} {v:.4f}" for k, v in self.scores.items())
        mixed = (f"; {len(self.mixed)} {held} group(s) with mixed labels" if self.mixed else "")
        return (f"images combined per group by their {self.rule}, chosen on {self.groups} "
                f"{held} groups of {self.images} images by the log loss of the group "
                f"probabilities ({scores}){mixed}")


def choose_rule(y: np.ndarray, calibrated: np.ndarray, groups, positive: int | None = None
                ) -> RuleChoice:
    """The rule whose held-out group probabilities have the lowest log loss against the group
    labels; `mean` when every group is one image (every rule is then the same)."""
    found = group_index(groups)
    if len(found.index) != len(calibrated):
        raise ValueError(f"{len(found.index)} groups for {len(calibrated)} cases")
    labelled = group_labels(y, found, positive)
    n, g = len(found.index), len(found.names)
    if not found.several:
        return RuleChoice(DEFAULT_RULE, {}, g, n, labelled.mixed)
    scores = {name: log_loss(labelled.labels, rule(calibrated, found))
              for name, rule in RULES.items()}
    best = DEFAULT_RULE
    for name, score in scores.items():
        if score < scores[best]:
            best = name
    return RuleChoice(best, scores, g, n, labelled.mixed)
