"""Seeded, stratified, group-aware train/val/test splits (checked against what was asked in
`split_checks.py`), and the fingerprints and manifest that record exactly which image went
where.

A group (lesion, patient) never straddles two splits: a lesion in both train and test is a leak
(HAM10000 holds several images of many lesions). Splits given by the layout (an official `test/`)
or by a user CSV are kept and checked, never silently rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from orchestrator.data.split_checks import check_shares, check_training_counts
from orchestrator.data.table import COLUMNS, make_table, target_columns
from orchestrator.errors import DataError
from tasks.base import SPLITS, Task

UNASSIGNED = ""
MAX_FOLDS = 20  # grouped splits take m of k folds per split (cost grows with k)
FRACTION_TOLERANCE = 0.01  # fewest folds whose m/k is this close to each asked fraction
MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
MISSING = "missing"  # the digest of a file that could not be read
SUBGROUP_PREFIX = "subgroup_"  # a subgroup's values (`subgroups.PREFIX`), never fingerprinted


class SplitWarning(UserWarning):
    """A split is usable but worse than asked for (e.g. a class missing from it)."""


def check_group_leaks(table: pd.DataFrame) -> None:
    """Refuse a table in which a group sits in two splits (or a split value is unknown)."""
    _check_split_values(table)
    decided = table[table["split"] != UNASSIGNED]
    per_group = decided.groupby("group")["split"].unique()
    leaks = per_group[per_group.map(len) > 1]
    if len(leaks):
        shown = "; ".join(f"{g!r} in {', '.join(sorted(s))}" for g, s in leaks.head(5).items())
        more = f" (and {len(leaks) - 5} more)" if len(leaks) > 5 else ""
        raise DataError(
            f"{len(leaks)} group(s) appear in more than one split: {shown}{more}; a group "
            "(lesion, patient) must stay in one split, fix the given splits"
        )


def assign_splits(table: pd.DataFrame, task: Task, seed: int) -> pd.DataFrame:
    """A copy with every row's split decided; given splits are kept, the rest are drawn."""
    check_group_leaks(table)
    out = _inherit_group_splits(table.copy())
    pool = out["split"] == UNASSIGNED
    made_test = bool(pool.any()) and not (out["split"] == "test").any()
    fractions = {"val": task.split.val_fraction}  # of the pool: the official test is apart
    if made_test:
        fractions = {"test": task.split.test_fraction, "val": task.split.val_fraction}
    if pool.any():
        sub = out[pool]
        out.loc[pool, "split"] = _draw(sub["label"].to_numpy(), sub["group"].to_numpy(),
                                       fractions, seed)
    check_group_leaks(out)
    _check_sizes(out, made_test and task.split.test_fraction > 0)
    if pool.any():
        asked = {**fractions, "train": 1.0 - sum(fractions.values())}
        check_shares(out[pool], "split", asked, "drawn images")
    check_training_counts(out, out["split"] == "train", "the training split")
    return out


def _check_split_values(table: pd.DataFrame) -> None:
    bad = sorted(set(table["split"]) - set(SPLITS) - {UNASSIGNED})
    if bad:
        raise DataError(f"unknown split value(s) {bad}; a split is one of {list(SPLITS)} or empty")


def _inherit_group_splits(table: pd.DataFrame) -> pd.DataFrame:
    """Undecided rows of a group that already has a given split join it (else they would leak)."""
    given = table[table["split"] != UNASSIGNED].groupby("group")["split"].first()
    joins = (table["split"] == UNASSIGNED) & table["group"].isin(given.index)
    if joins.any():
        table.loc[joins, "split"] = table.loc[joins, "group"].map(given)
        warnings.warn(f"{int(joins.sum())} image(s) joined the given split of their group",
                      SplitWarning, stacklevel=3)
    return table


def _draw(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
          seed: int) -> np.ndarray:
    """Split names for a pool: about `fractions` of its images each, the rest train."""
    n_groups = len(np.unique(groups))
    plan = _fold_plan(fractions, min(MAX_FOLDS, n_groups, _largest_class(labels)))
    if n_groups == len(labels) or plan is None:
        return _draw_by_groups(labels, groups, fractions, seed)
    return _draw_by_folds(labels, groups, plan, seed)


def _largest_class(labels: np.ndarray) -> int:
    return int(pd.Series(labels).value_counts().max())


def _fold_plan(fractions: dict[str, float], max_folds: int) -> tuple[int, list[str]] | None:
    """The fewest folds k (and each fold's split) giving every fraction to within tolerance."""
    best = None
    for k in range(2, max_folds + 1):
        taken = {name: max(1, round(f * k)) for name, f in fractions.items() if f > 0}
        if sum(taken.values()) >= k:
            continue
        error = max((abs(m / k - fractions[n]) for n, m in taken.items()), default=0.0)
        if best is None or error < best[0] - 1e-9:
            best = (error, k, taken)
        if error <= FRACTION_TOLERANCE:
            break
    if best is None:
        return None
    _, k, taken = best
    names = [name for name, m in taken.items() for _ in range(m)]
    return k, names + ["train"] * (k - len(names))


def _draw_by_folds(labels: np.ndarray, groups: np.ndarray, plan: tuple[int, list[str]],
                   seed: int) -> np.ndarray:
    """StratifiedGroupKFold: whole groups per fold, class and fold sizes balanced."""
    k, fold_split = plan
    out = np.full(len(labels), "train", dtype=object)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class" is reported per split later
        warnings.simplefilter("ignore", UserWarning)
        for (_, idx), name in zip(splitter.split(labels, labels, groups), fold_split):
            out[idx] = name
    return out


def _draw_by_groups(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
                    seed: int) -> np.ndarray:
    """Stratified train_test_split over whole groups (labelled by their first image).

    With one image per group this is exactly a plain stratified split of the images.
    """
    first = pd.Series(labels).groupby(groups, sort=True).first()
    names = pd.Series("train", index=first.index, dtype=object)
    remaining = first
    for name, fraction in fractions.items():
        size = min(round(fraction * len(first)), len(remaining) - 1)
        if size < 1:
            continue
        held = _stratified_sample(remaining, size, seed)
        names[held] = name
        remaining = remaining.drop(held)
    return names.loc[groups].to_numpy()


def _stratified_sample(labels: pd.Series, size: int, seed: int) -> pd.Index:
    """`size` index entries, stratified by label; unstratified where a class is too rare."""
    positions = np.arange(len(labels))
    try:
        _, held = train_test_split(positions, test_size=size, stratify=labels.to_numpy(),
                                   random_state=seed)
    except ValueError:  # a class with one member, or fewer held-out items than classes
        _, held = train_test_split(positions, test_size=size, random_state=seed)
    return labels.index[held]


def _check_sizes(table: pd.DataFrame, made_test: bool) -> None:
    """Empty train/val (or a test we were asked to draw) is an error; a missing class a warning."""
    counts = table.groupby("split").size()
    required = ["train", "val"] + (["test"] if made_test else [])
    empty = [s for s in required if counts.get(s, 0) == 0]
    if empty:
        raise DataError(
            f"split(s) {empty} came out empty: {len(table)} images in "
            f"{table['group'].nunique()} group(s) are too few to split; add images or give "
            "the splits explicitly"
        )
    classes = set(table["label"])
    for split, labels in table.groupby("split")["label"]:
        missing = sorted(classes - set(labels))
        if missing:
            warnings.warn(f"split {split!r} has no images of class(es) {missing}; its metrics "
                          "will not cover them", SplitWarning, stacklevel=3)


def assign_folds(table: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """A copy with a `fold` column: "0".."folds-1" for every non-test row, whole groups per fold,
    classes balanced (StratifiedGroupKFold); "" for test rows, which no fold ever sees."""
    out = table.assign(fold="")
    if folds == 0:
        return out
    pool = out["split"] != "test"
    groups = out.loc[pool, "group"].nunique()
    if folds < 2 or folds > groups:
        raise DataError(f"cannot make {folds} folds of {groups} group(s) outside the test "
                        "split; use 2 or more folds, at most one per group (or --cv-folds 0)")
    labels, group_ids = out.loc[pool, "label"].to_numpy(), out.loc[pool, "group"].to_numpy()
    largest = int(pd.Series(labels).value_counts().max())
    if folds > largest:
        raise DataError(f"cannot make {folds} folds: the largest class outside the test split "
                        f"has {largest} image(s); use at most {largest} folds (or --cv-folds 0)")
    fold = np.empty(len(labels), dtype=object)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class" is the data's fact, not ours
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(splitter.split(labels, labels, group_ids)):
            fold[held] = str(k)
    out.loc[pool, "fold"] = fold
    check_shares(out[pool], "fold", {str(k): 1.0 / folds for k in range(folds)},
                 "images outside the test split")
    for k in range(folds):
        check_training_counts(out[pool], out.loc[pool, "fold"] != str(k),
                              f"the training part of fold {k}")
    return out


def content_fingerprint(paths: list[str], workers: int | None = None) -> str:
    """Hash of file names (relative to their common root) and bytes: the image-cache key.

    Independent of labels and splits, so re-splitting with another seed reuses the cache; and of
    where the data is mounted, so a moved data set is not decoded again.
    """
    return fingerprint_of(paths, file_digests(paths, workers) if paths else [])


def fingerprint_of(paths: list[str], digests: list[str]) -> str:
    """`content_fingerprint` from digests already computed (`file_digests`): each file is read
    once, however many fingerprints are taken of its subsets."""
    if not paths:
        return hashlib.blake2b(b"empty", digest_size=16).hexdigest()
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    h = hashlib.blake2b(digest_size=16)
    for path, digest in zip(paths, digests):
        rel = Path(os.path.relpath(os.path.abspath(path), root)).as_posix()
        raw = bytes.fromhex(digest) if digest != MISSING else MISSING.encode()
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + raw + b"\n")
    return h.hexdigest()


def file_digests(paths: list[str], workers: int | None = None) -> list[str]:
    """Each file's content hash (hex), or MISSING: what the manifest records per image, so a
    later stage can prove it reads the very bytes the sweep split."""
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(_file_digest, paths))


def _file_digest(path: str) -> str:
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return MISSING


def data_fingerprint(table: pd.DataFrame, content_fp: str, task: Task | None = None) -> str:
    """Content plus labels, groups and splits: what a run trained and was scored on (and the
    DICOM window and frame, where not the defaults). A
    multi-head task's `target_<head>` columns (where the table has them) and heads (where
    `task` has them: their classes' order gives the indices trained on) count too."""
    h = hashlib.blake2b(content_fp.encode(), digest_size=16)
    reading = task.preprocessing if task is not None else None
    if reading is not None and (reading.dicom_window != "file" or reading.dicom_frame >= 0):
        # other DICOM pixels: another data set, whose own manifest must not be overwritten
        h.update(f"dicom {reading.dicom_window} {reading.dicom_frame}\n".encode())
    if task is not None and task.heads:
        h.update(json.dumps(task.summary()["heads"], sort_keys=True).encode() + b"\n")
    folds = "fold" in table and bool((table["fold"] != "").any())
    columns = ["label", "group", "split"] + (["fold"] if folds else []) + target_columns(table)
    for row in table[columns].itertuples(index=False):
        h.update("\x1f".join(row).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def write_manifest(table: pd.DataFrame, out_dir: str | Path, root: str | Path, fingerprint: str,
                   synthetic: bool, digests: list[str] | None = None,
                   task: Task | None = None) -> Path:
    """`manifest.csv` (paths relative to root; a multi-head task's `target_<head>` columns;
    each file's content hash when `digests` is given) and `manifest.json` (fingerprint, root,
    counts; the task's classes and positive class, how DICOM files were read, and its heads
    where it has them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.abspath(root))
    frame = table[[*COLUMNS, *target_columns(table), *_subgroup_columns(table)]].copy()
    frame["path"] = [Path(os.path.relpath(p, root)).as_posix() for p in frame["path"]]
    if "fold" in table:
        frame["fold"] = table["fold"].to_numpy()
    if digests is not None:
        frame["hash"] = digests
    _write_atomic(out / MANIFEST_CSV, frame.to_csv(index=False))
    counts = pd.crosstab(table["split"], table["label"])
    meta = {
        "fingerprint": fingerprint,
        "root": str(root),
        "synthetic": bool(synthetic),
        "images": len(table),
        "counts": {s: {c: int(n) for c, n in row.items()} for s, row in counts.iterrows()},
    }
    if task is not None:
        meta.update(task=task.key, classes=list(task.classes), positive_class=task.positive_class,
                    dicom_window=task.preprocessing.dicom_window,
                    dicom_frame=task.preprocessing.dicom_frame)
        if task.heads:
            meta["heads"] = task.summary()["heads"]
    _write_atomic(out / MANIFEST_JSON, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out / MANIFEST_CSV


def _subgroup_columns(table: pd.DataFrame) -> list[str]:
    """The `subgroup_<name>` columns (`orchestrator.data.subgroups`): recorded when asked."""
    return [c for c in table.columns if c.startswith(SUBGROUP_PREFIX)]


def _write_atomic(path: Path, text: str) -> None:
    """Trials sharing a data fingerprint write the same manifest: a reader never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)


def read_manifest(path: str | Path, root: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The table (absolute paths again, under `root` if given, else the recorded root; with the
    recorded `target_<head>`, `fold`, `hash` and `subgroup_<name>` columns where there are) and
    the metadata it was written with."""
    path = Path(path)
    csv = path / MANIFEST_CSV if path.is_dir() else path
    meta = json.loads((csv.parent / MANIFEST_JSON).read_text())
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    base = Path(root if root is not None else meta["root"])
    frame["path"] = [os.path.normpath(base / p) for p in frame["path"]]
    table = make_table(frame.to_dict("records"), extra=target_columns(frame))
    for extra in ("fold", "hash", *_subgroup_columns(frame)):  # beyond the reader's, if recorded
        if extra in frame:
            table[extra] = table["path"].map(dict(zip(frame["path"], frame[extra])))
    return table, meta


def split_fingerprint(table: pd.DataFrame, split: str) -> str:
    """One split's content and labels (and targets, a multi-head task's), whatever its file
    names, the other splits or how groups were named: two models with the same test
    fingerprint were tested on the same cases."""
    rows = table[table["split"] == split]
    if "hash" not in rows:
        raise ValueError("the table has no content hashes (a recorded manifest has them)")
    h = hashlib.blake2b(split.encode(), digest_size=16)
    targets = [rows[c] for c in target_columns(rows)]
    for row in sorted(zip(rows["hash"], rows["label"], *targets)):
        h.update("\x1f".join(row).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()
