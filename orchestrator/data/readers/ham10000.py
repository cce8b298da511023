"""HAM10000: `HAM10000_metadata.csv` plus `<image_id>.jpg` in one or more image folders.

Kaggle ships `HAM10000_images_part_1/` and `_part_2/` (and, in some mirrors, lower-case
duplicates of both); other copies hold every image in one folder or beside the CSV. Images are
found by `image_id` anywhere under the layout root. Groups are `lesion_id`: one lesion has
several images, and a lesion in both train and test is a leak.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from orchestrator.data.readers.walk import Collector
from orchestrator.errors import DataError
from orchestrator.data.table import Scan
from tasks.base import Task

METADATA = "HAM10000_metadata.csv"
EXPECTED = ("expected " + METADATA + " under {root} (HAM10000 layout: the CSV beside "
            "HAM10000_images_part_1/ and HAM10000_images_part_2/)")
REQUIRED = ("lesion_id", "image_id", "dx")
ALL_COLUMNS = "lesion_id,image_id,dx,dx_type,age,sex,localization"
DEFAULT_FOLDER = "HAM10000_images_part_1"  # where a missing image is expected


def _metadata_file(folder: Path) -> Path | None:
    with os.scandir(folder) as entries:
        return next((Path(e.path) for e in entries
                     if e.name.lower() == METADATA.lower() and e.is_file()), None)


def read_metadata(csv: Path, task: Task) -> pd.DataFrame:
    """The metadata with a canonical `source` column; DataError on missing columns or codes."""
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {csv}: {exc}") from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {', '.join(missing)}; expected columns "
                        f"{ALL_COLUMNS} (at least {', '.join(REQUIRED)})")
    frame["source"] = frame["dx"].map(task.canonical_source_label)
    unknown = frame.index[frame["source"].isna()]
    if len(unknown):
        row = unknown[0]
        raise DataError(f"{csv} line {row + 2}: unknown dx {frame.at[row, 'dx']!r} for image "
                        f"{frame.at[row, 'image_id']}; valid codes: "
                        f"{', '.join(task.source_labels)}")
    return frame


def _index_images(col: Collector, csv: Path) -> dict[str, Path]:
    """image id -> file; a second file with the same id (a duplicate folder) is skipped."""
    index: dict[str, Path] = {}
    ranked = sorted(col.images(col.root, known=frozenset({csv})),
                    key=lambda p: (not p.parent.name.startswith("HAM10000_images"), str(p)))
    for path in ranked:
        if path.stem in index:
            col.skip(path, "duplicate image id (another copy is used)")
        else:
            index[path.stem] = path
    return index


def read(task: Task, given: Path) -> Scan:
    col = Collector.found(task, given, EXPECTED, lambda d: _metadata_file(d) is not None)
    csv = _metadata_file(col.root)
    frame = read_metadata(csv, task)
    index = _index_images(col, csv)
    missing = 0
    for image_id, lesion_id, source in zip(frame["image_id"], frame["lesion_id"], frame["source"]):
        path = index.pop(image_id, None)
        missing += path is None
        path = path or col.root / DEFAULT_FOLDER / f"{image_id}.jpg"
        col.add(path, source, lesion_id or col.relative(path), "")
    for path in index.values():
        col.skip(path, "not in metadata")
    if missing:
        col.notes.append(f"{missing} metadata rows have no image file; they are kept (expected "
                         f"under {DEFAULT_FOLDER}/) so the integrity check reports them")
    col.notes.append(f"grouped by lesion_id: {frame['lesion_id'].nunique()} lesions, "
                     f"{len(frame)} images")
    return col.scan()
