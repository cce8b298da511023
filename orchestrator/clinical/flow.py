"""The participant flow of a sweep's data, counted from what it recorded: the files found, what
was left out before splitting and why, the duplicate copies, and each split and fold per class
and per group. Pure counting over the recorded tables (manifest.csv, unreadable.csv,
duplicates.csv, duplicates_left_out.csv), so the report's diagram and the model card's checklist
read the same numbers; what a reviewer checks first (TRIPOD+AI, CLAIM: "participant flow")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from orchestrator.data.splits import SUBGROUP_PREFIX
from orchestrator.data.subgroups import value_order
from tasks.base import SPLITS

COPY_LEFT_OUT = "copy of an image in a held-out split"


@dataclass(frozen=True)
class Stage:
    """One box of the diagram: how many images, per class, and in how many groups."""

    name: str
    images: int
    groups: int
    per_class: Mapping[str, int]


@dataclass(frozen=True)
class Flow:
    found: Stage  # every file the reader listed, before anything was left out
    left_out: Mapping[str, int]  # why -> images ("missing", "unreadable", COPY_LEFT_OUT)
    unreadable_details: Mapping[str, int]  # what the decoder said -> images
    duplicate_pairs: int  # pairs of copies found before splitting
    used: Stage
    splits: tuple[Stage, ...]  # train, val, test (those present)
    folds: tuple[Stage, ...]  # fold 0..k-1 outside the test split; () for a holdout

    @property
    def left_out_total(self) -> int:
        return sum(self.left_out.values())


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in columns})


def _rows(frame: pd.DataFrame | None, columns: Sequence[str]) -> pd.DataFrame:
    """A recorded table, or an empty one with its columns (an older sweep's absent file)."""
    if frame is None or frame.empty:
        return _empty(columns)
    return frame


def stage(name: str, rows: pd.DataFrame, classes: Sequence[str]) -> Stage:
    """Images, groups and images per class (every class named, zero included) of `rows`."""
    counts = rows["label"].value_counts() if len(rows) else pd.Series(dtype=int)
    groups = int(rows["group"].nunique()) if "group" in rows and len(rows) else 0
    return Stage(name, len(rows), groups, {c: int(counts.get(c, 0)) for c in classes})


def flow_counts(manifest: pd.DataFrame, classes: Sequence[str],
                unreadable: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None,
                copies_left_out: pd.DataFrame | None = None) -> Flow:
    """The flow from the recorded tables. Files found = used + unreadable or missing + copies
    left out; a group of the found box counts the used images' groups plus one per left-out
    file (left-out files were never grouped)."""
    lost = _rows(unreadable, ["path", "label", "reason", "detail"])
    dropped = _rows(copies_left_out, ["path", "label", "group"])
    pairs = _rows(pairs, ["path_a", "path_b"])
    left_out = {str(k): int(v) for k, v in lost["reason"].value_counts().sort_index().items()}
    if len(dropped):
        left_out[COPY_LEFT_OUT] = len(dropped)
    details = lost.loc[lost["reason"] == "unreadable", "detail"].replace("", "no reason given")
    used = stage("used", manifest, classes)
    everything = pd.concat([manifest[["label"]], lost[["label"]], dropped[["label"]]])
    found = stage("found", everything, classes)
    found = Stage("found", found.images, used.groups + len(lost) + len(dropped), found.per_class)
    splits = tuple(stage(s, manifest[manifest["split"] == s], classes) for s in SPLITS
                   if (manifest["split"] == s).any())
    folds: tuple[Stage, ...] = ()
    if "fold" in manifest and (manifest["fold"].astype(str) != "").any():
        pool = manifest[manifest["fold"].astype(str) != ""]
        names = sorted(pool["fold"].astype(str).unique(), key=int)
        folds = tuple(stage(f"fold {k}", pool[pool["fold"].astype(str) == k], classes)
                      for k in names)
    return Flow(found, left_out, {str(k): int(v) for k, v in details.value_counts().items()},
                len(pairs), used, splits, folds)


def _share(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.0f}%)" if total else "0"


def characteristics(manifest: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One row per split and the total: images, groups, each class and each recorded subgroup
    value (`subgroup_<name>` columns) as count (share of the split). Where a split's mix differs
    from another's, its figures are not comparable."""
    subgroups = [c for c in manifest.columns if c.startswith(SUBGROUP_PREFIX)]
    parts = [(s, manifest[manifest["split"] == s]) for s in SPLITS
             if (manifest["split"] == s).any()] + [("all", manifest)]
    rows = []
    for name, rows_of in parts:
        n = len(rows_of)
        row = {"split": name, "images": n, "groups": int(rows_of["group"].nunique())}
        counts = rows_of["label"].value_counts()
        row.update({f"class {c}": _share(int(counts.get(c, 0)), n) for c in classes})
        for column in subgroups:
            values = rows_of[column].astype(str).replace("", "unknown").value_counts()
            every = sorted(manifest[column].astype(str).replace("", "unknown").unique(),
                           key=value_order)
            row.update({f"{column[len(SUBGROUP_PREFIX):]} {v}": _share(int(values.get(v, 0)), n)
                        for v in every})
        rows.append(row)
    return pd.DataFrame(rows)
