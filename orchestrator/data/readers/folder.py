"""The user's own data: one sub-folder per class, or a CSV `path,label[,group][,split]`.

Classes are discovered (sorted names) and returned in `Scan.task`. A folder whose sub-folders
are all `train`/`val`/`test` is read as split folders each holding class folders.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator.data.readers.walk import Collector, subdirs
from orchestrator.data.table import Scan
from orchestrator.errors import DataError
from tasks.base import Task

LABELS_CSV = "labels.csv"
SPLIT_VALUES = ("train", "val", "test", "")


def read(task: Task, given: Path) -> Scan:
    """`given` is a CSV file, a folder holding `labels.csv`, or a folder of class folders."""
    if given.is_file():
        return _read_csv(task, given, given.parent)
    if (given / LABELS_CSV).is_file():
        return _read_csv(task, given / LABELS_CSV, given)
    return _read_folders(task, given)


def _read_folders(task: Task, root: Path) -> Scan:
    col = Collector(task, root, root)
    folders = subdirs(root)
    split_folders = bool(folders) and all(f.name.lower() in SPLIT_VALUES for f in folders)
    col.tidy(root, "image outside a class folder")
    for split_dir in folders if split_folders else [root]:
        split = split_dir.name.lower() if split_folders else ""
        if split_folders:
            col.tidy(split_dir, "image outside a class folder")
        for folder in subdirs(split_dir):
            for path in col.class_images(folder):
                col.add_labelled(path, folder.name, folder.name, col.relative(path), split)
    col.notes.append("folder layout: each image is its own group")
    return col.scan(_discovered(task, [row["label"] for row in col.rows], root))


def _read_csv(task: Task, csv: Path, root: Path) -> Scan:
    frame = _load_csv(csv)
    col = Collector(task, root, root)
    for line, row in zip(range(2, len(frame) + 2), frame.itertuples(index=False)):
        if not row.label:
            raise DataError(f"{csv} line {line}: empty label")
        split = row.split.lower()
        if split not in SPLIT_VALUES:
            raise DataError(f"{csv} line {line}: split {row.split!r} is not one of train, val, "
                            "test or empty")
        path = (root / row.path).resolve()  # an absolute path in the CSV stays as it is
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        col.add_labelled(path, row.label, row.label, row.group or rel, split)
    return col.scan(_discovered(task, list(frame["label"]), csv))


def _load_csv(csv: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {csv}: {exc}") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {', '.join(missing)}; expected columns "
                        "path,label[,group][,split]")
    for optional in ("group", "split"):
        if optional not in frame.columns:
            frame[optional] = ""
    return frame[["path", "label", "group", "split"]].apply(lambda c: c.str.strip())


def _discovered(task: Task, labels: list[str], where: Path) -> Task:
    """The task with the classes found in the data; fewer than two cannot be trained."""
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise DataError(f"found {len(classes)} class(es) {list(classes)} in {where}; "
                        "need at least 2 (one sub-folder or label per class)")
    return task.with_classes(classes)
