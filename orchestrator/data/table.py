"""The one data-table shape every reader returns and every later stage reads.

A table is a pandas DataFrame, sorted by `path`, with the columns in `COLUMNS`:
  path          absolute path of the image file (it may be missing on disk: integrity checks say so)
  label         the class the image trains as under the task's variant (one of `task.classes`)
  source_label  the label as the data set names it (dx code, folder name), canonicalised
  group         what must never straddle two splits (lesion id, patient id); the image's own
                relative path when the task or the data carry no groups
  split         "train", "val", "test", or "" where the splitter must decide
A multi-head task's table (`Task.heads`) has one more string column per head, after these:
  target_<head> the head's class (classification) or its value as written (regression); `label`
                and `source_label` are then the first classification head's class
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.base import Task

COLUMNS = ("path", "label", "source_label", "group", "split")
TARGET_PREFIX = "target_"  # a multi-head task's per-head columns: `target_<head name>`
# Files with other names (or none: PACS exports often have none) are images when they start
# like DICOM (`orchestrator.data.dicom.is_dicom_file`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm",
                              ".dicom"})
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
JUNK_DIRS = frozenset({"__macosx", ".ipynb_checkpoints"})
# Written at the root of every phantom, so synthetic data is labelled as such wherever it goes.
PHANTOM_MARKER = "MEDSWEEP_SYNTHETIC_PHANTOM.txt"
# Kept at the root of a DICOM data set: the salt of its patients' pseudonyms (header_groups).
SALT_FILE = ".medsweep_salt"
OWN_FILES = frozenset({PHANTOM_MARKER, SALT_FILE})  # MedSweep's own files in a data root


@dataclass(frozen=True)
class Skipped:
    """A file or folder a reader saw and did not use, and why."""

    path: str
    reason: str
    chosen: bool = False  # left out by the task's definition (a variant's classes), not a fault


@dataclass
class Scan:
    """What a reader found under a data folder."""

    task: Task  # resolved: the `folder` task carries the classes it found
    root: Path
    table: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)  # facts a user should read (e.g. val re-split)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.table["label"]))


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})


def target_column(head: str) -> str:
    """The table column holding one head's target."""
    return TARGET_PREFIX + head


def target_columns(table: pd.DataFrame) -> list[str]:
    """The `target_<head>` columns a table carries, in its order (none for one head)."""
    return [c for c in table.columns if c.startswith(TARGET_PREFIX)]


def make_table(rows: list[dict], extra: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Rows of dicts with `COLUMNS` keys (and the `extra` ones: a multi-head task's
    `target_<head>` columns) -> a sorted table with string columns."""
    columns = [*COLUMNS, *extra]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in columns})
    frame = pd.DataFrame(rows, columns=columns).astype(str)
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def summarize_skipped(skipped: list[Skipped], show: int = 5) -> list[str]:
    """One line per reason with a count and the first few paths: what a user needs to act."""
    by_reason: dict[tuple[str, bool], list[str]] = {}
    for item in skipped:
        by_reason.setdefault((item.reason, item.chosen), []).append(item.path)
    lines = []
    for (reason, chosen), paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        if chosen:  # nothing to act on: no paths
            lines.append(f"left out {len(paths)} image(s): {reason}")
            continue
        shown = ", ".join(paths[:show]) + (", ..." if len(paths) > show else "")
        lines.append(f"skipped {len(paths)} ({reason}): {shown}")
    return lines
