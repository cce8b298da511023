"""Guarded promotion: `champion` moves to the current `candidate` only when both were tested on
the same cases and the paired bootstrap interval of (candidate - champion) on the task metric
lies above 0. `--force` overrides a refusal, and the version says so in a tag. A test split of
fewer than MIN_GROUPS groups has no interval (`bootstrap.interval_note`), so nothing can show
the candidate better: refused.

`compare` is the pure part (two models' test predictions in, the paired difference out); the
report's ensemble-vs-best-single comparison uses the same `paired_difference`. A multi-head
model's test predictions (`<head>_true` per head, no `label`) are compared on mean_skill, which
calibration does not change (argmax and values only).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.clinical.bootstrap import (DEFAULT_RESAMPLES, MIN_GROUPS, NO_INTERVAL,
                                             count_units, paired_difference, resample_indices)
from orchestrator.clinical.weighted_metrics import weighted_metrics, weighted_multihead_metrics
from orchestrator.errors import ConfigError
from orchestrator.serving.contract import PROBABILITY_PREFIX, VALUE

Log = Callable[[str], None]
from orchestrator.keys import (TAG_DIFFERENCE, TAG_OVER,  # noqa: E402
                                        TAG_PROMOTION, VERSION_POSITIVE_CLASS, VERSION_SWEEP_RUN,
                                        VERSION_TEST_FINGERPRINT, version_metric_tag)


@dataclass(frozen=True)
class Comparison:
    metric: str
    cases: int
    point: float
    low: float
    high: float
    resamples: int
    groups: int = 0  # resampling units of the test split
    note: str = ""  # why there is no interval (then low and high are NaN)

    @property
    def better(self) -> bool:
        return not self.note and bool(self.low > 0)

    def interval(self, digits: int = 3) -> str:
        if self.note:
            return f"{self.point:+.{digits}f} {NO_INTERVAL}"
        return f"{self.point:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def text(self) -> str:
        if self.note:
            return (f"candidate - champion {self.metric} = {self.interval()} ({self.note}; "
                    f"{self.cases} test images in {self.groups} group(s))")
        return (f"candidate - champion {self.metric} = {self.interval()} (95% paired "
                f"bootstrap, {self.resamples} resamples of the same {self.cases} test images)")


def _aligned(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["hash", "label", "path"], kind="mergesort").reset_index(drop=True)


def compare(candidate: pd.DataFrame, champion: pd.DataFrame, metric: str,
            positive_class: str | None = None, resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0, task=None) -> Comparison:
    """Both frames are `test_predictions.csv` (path, hash, group, label, prob_<class>...): the
    same images (by content) with the same labels, else a ConfigError says what differs.
    Multi-head frames (`<head>_true` columns) need the multi-head `task`."""
    if "label" not in candidate.columns or "label" not in champion.columns:
        return _compare_multihead(candidate, champion, metric, task, resamples, seed)
    a, b = _aligned(candidate), _aligned(champion)
    if list(a["hash"]) != list(b["hash"]) or list(a["label"]) != list(b["label"]):
        raise ConfigError(f"the candidate was tested on {len(a)} images and the champion on "
                          f"{len(b)}, not the same images with the same labels: their test "
                          "figures cannot be compared")
    columns = [c for c in a.columns if c.startswith(PROBABILITY_PREFIX)]
    if columns != [c for c in b.columns if c.startswith(PROBABILITY_PREFIX)]:
        raise ConfigError(f"the candidate's classes {columns} differ from the champion's")
    classes = [c[len(PROBABILITY_PREFIX):] for c in columns]
    y = np.array([classes.index(label) for label in a["label"]])
    positive = classes.index(positive_class) if positive_class in classes else None

    def score(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return weighted_metrics(labels, probs, counts, positive)[metric]

    groups = a["group"].astype(str).to_numpy()
    draws = resample_indices(y, groups, resamples, seed)
    d = paired_difference(score, y, a[columns].to_numpy(np.float64),
                          b[columns].to_numpy(np.float64), draws, units=count_units(y, groups))
    return _comparison(metric, len(y), d)


def _comparison(metric: str, cases: int, d: dict) -> Comparison:
    return Comparison(metric, cases, d["point"], d["low"], d["high"], d["resamples"],
                      d["groups"], d["note"])


TRUE_SUFFIX = "_true"


def _heads_of(frame: pd.DataFrame, task):
    """The heads a multi-head `test_predictions.csv` answers, in its column order: a
    `<head>_true` column each, then `<head>_prob_<class>` columns or a `<head>_value`."""
    from tasks.base import Head

    names = [c[:-len(TRUE_SUFFIX)] for c in frame.columns if c.endswith(TRUE_SUFFIX)]
    if task is None or not task.is_multihead or not names:
        raise ConfigError("these test predictions have no `label` column and no multi-head "
                          "`<head>_true` columns (or no multi-head task was given): they cannot "
                          "be compared")
    heads = []
    for name in names:
        prefix = f"{name}_{PROBABILITY_PREFIX}"
        classes = [c[len(prefix):] for c in frame.columns if c.startswith(prefix)]
        heads.append(Head(name, "classification", classes=tuple(classes)) if classes else
                     Head(name, "regression"))
    return task.with_heads(tuple(heads))


def _compare_multihead(candidate: pd.DataFrame, champion: pd.DataFrame, metric: str, task,
                       resamples: int, seed: int) -> Comparison:
    heads_a, heads_b = _heads_of(candidate, task), _heads_of(champion, task)
    if heads_a.heads != heads_b.heads:
        raise ConfigError(f"the candidate's heads {_names(heads_a)} differ from the "
                          f"champion's {_names(heads_b)}")
    task = heads_a
    truth = [f"{h.name}{TRUE_SUFFIX}" for h in task.heads]
    key = ["hash", *truth, "path"]
    a = candidate.sort_values(key, kind="mergesort").reset_index(drop=True)
    b = champion.sort_values(key, kind="mergesort").reset_index(drop=True)
    if list(a["hash"]) != list(b["hash"]) or not a[truth].equals(b[truth]):
        raise ConfigError(f"the candidate was tested on {len(a)} images and the champion on "
                          f"{len(b)}, not the same images with the same labels: their test "
                          "figures cannot be compared")
    y = np.column_stack([
        [h.classes.index(str(v)) for v in a[f"{h.name}{TRUE_SUFFIX}"]] if h.is_classification
        else a[f"{h.name}{TRUE_SUFFIX}"].to_numpy(np.float64) for h in task.heads]).astype(
            np.float64)

    columns = [c for h in task.heads for c in (
        [f"{h.name}_{PROBABILITY_PREFIX}{k}" for k in h.classes] if h.is_classification
        else [f"{h.name}_{VALUE}"])]

    def score(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return weighted_multihead_metrics(labels, probs, counts, task)[metric]

    first = next(i for i, h in enumerate(task.heads) if h.is_classification)
    groups = a["group"].astype(str).to_numpy()
    draws = resample_indices(y[:, first].astype(np.int64), groups, resamples, seed)
    d = paired_difference(score, y, a[columns].to_numpy(np.float64),
                          b[columns].to_numpy(np.float64), draws, units=count_units(y, groups))
    return _comparison(metric, len(y), d)


def _names(task) -> list[str]:
    return [h.name for h in task.heads]


def _read_predictions(path: Path) -> pd.DataFrame:
    """Paths, hashes, groups and labels as text (a class named `1` stays `1`); a multi-head
    file's `<head>_true` columns too (a regression head's value is read back as a number)."""
    columns = pd.read_csv(path, nrows=0).columns
    text = {"path": str, "hash": str, "group": str, "label": str}
    if "label" not in columns:
        text.update({c: str for c in columns if c.endswith(TRUE_SUFFIX)})
    return pd.read_csv(path, dtype=text)


def promote(task_name: str, *, tracking_uri: str | None = None, force: bool = False,
            resamples: int = DEFAULT_RESAMPLES, log: Log = print) -> bool:
    """Move `champion` to `candidate` when it is better (or forced); True when it moved."""
    from orchestrator import tracking
    from orchestrator.ensemble.artifacts import TEST_PREDICTIONS
    from orchestrator.tracking import registry
    from tasks import get_task

    task = get_task(task_name)
    uri = tracking_uri or tracking.default_tracking_uri()
    name = registry.registered_name(task.name)
    candidate = registry.version_by_alias(uri, name, registry.CANDIDATE)
    if candidate is None:
        raise ConfigError(f"no {name}@{registry.CANDIDATE} in {uri}: run a sweep of {task_name} "
                          "first (or pass the --tracking-uri it used)")
    champion = registry.version_by_alias(uri, name, registry.CHAMPION)
    log(f"candidate: {name} version {candidate.version} "
        f"({_figure(candidate, task.metric)})")
    if champion is None:
        registry.set_alias(uri, name, registry.CHAMPION, candidate.version,
                           {TAG_PROMOTION: "first champion"})
        log(f"no champion yet: {name}@{registry.CHAMPION} -> version {candidate.version}")
        return True
    log(f"champion:  {name} version {champion.version} ({_figure(champion, task.metric)})")
    if champion.version == candidate.version:
        log(f"the candidate is already the champion (version {candidate.version}); nothing moved")
        return False
    reason = None
    comparison = None
    if candidate.tags.get(VERSION_TEST_FINGERPRINT) != champion.tags.get(VERSION_TEST_FINGERPRINT):
        reason = ("they were tested on different data (test fingerprints "
                  f"{candidate.tags.get(VERSION_TEST_FINGERPRINT, '?')[:12]} and "
                  f"{champion.tags.get(VERSION_TEST_FINGERPRINT, '?')[:12]})")
    else:
        with tempfile.TemporaryDirectory(prefix="medsweep-promote-") as tmp:
            frames = [_read_predictions(tracking.download(uri, v.run_id, TEST_PREDICTIONS,
                                                          Path(tmp) / str(v.version)))
                      for v in (candidate, champion)]
        comparison = compare(*frames, task.metric, candidate.tags.get(VERSION_POSITIVE_CLASS),
                             resamples, task=task)
        log(comparison.text())
        if comparison.note:
            reason = (f"the test split holds {comparison.groups} group(s), fewer than the "
                      f"{MIN_GROUPS} a paired interval needs, so nothing shows the candidate "
                      "better" if comparison.groups < MIN_GROUPS else
                      "the paired interval is zero-width (no interval), so nothing shows the "
                      "candidate better")
        elif not comparison.better:
            reason = "the interval does not lie above 0"
    tags = {TAG_OVER: str(champion.version)}
    if comparison is not None:
        tags[TAG_DIFFERENCE] = (f"{comparison.interval(4)} {comparison.metric}"
                                + (f" ({comparison.note})" if comparison.note else ""))
    if reason is not None and not force:
        log(f"refused: {reason}; {name}@{registry.CHAMPION} stays at version "
            f"{champion.version} (--force promotes anyway, and is recorded as a tag)")
        return False
    tags[TAG_PROMOTION] = f"forced ({reason})" if reason else "paired bootstrap"
    registry.set_alias(uri, name, registry.CHAMPION, candidate.version, tags)
    log(f"{'forced: ' if reason else 'promoted: '}{name}@{registry.CHAMPION} -> version "
        f"{candidate.version} (was {champion.version})")
    return True


def _figure(version, metric: str) -> str:
    value = version.tags.get(version_metric_tag(metric), "?")
    return f"test {metric} {value}, sweep run {version.tags.get(VERSION_SWEEP_RUN, '?')}"
