"""Kaggle Chest X-Ray Images (Pneumonia): `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`.

`test` stays the test split; `train` and the shipped 16-image `val` (too small to select on)
go to the splitter, which re-splits validation grouped by patient. The patient id is in the
file name: `person1_bacteria_1` -> `person1`, `IM-0115-0001` -> `IM-0115`,
`NORMAL2-IM-1427-0001` -> `NORMAL2-IM-1427`.
"""
from __future__ import annotations

import re
from pathlib import Path

from orchestrator.data.readers.walk import Collector, child_dir
from orchestrator.data.table import Scan
from tasks.base import Task

EXPECTED = ("expected train/ and test/ under {root} (Kaggle chest_xray layout: "
            "chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg)")
SPLITS = {"train": "", "val": "", "test": "test"}  # folder -> split ("": the splitter decides)
PATIENT_PATTERNS = (
    re.compile(r"(?i)^(person\d+)_(?:bacteria|virus)_\d+$"),
    re.compile(r"(?i)^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$"),
)


def patient_id(stem: str) -> str | None:
    """The patient id in a file name (without extension), or None when it carries none."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return None


def _is_layout(folder: Path) -> bool:
    return child_dir(folder, "train") is not None and child_dir(folder, "test") is not None


def read(task: Task, given: Path) -> Scan:
    col = Collector.found(task, given, EXPECTED, _is_layout)
    col.tidy(col.root, "image outside train/, val/ and test/")
    unmatched = shipped_val = 0
    for name, split in SPLITS.items():
        split_dir = child_dir(col.root, name)
        if split_dir is None:
            continue
        for folder, source in col.class_folders(split_dir):
            for path in col.class_images(folder):
                patient = patient_id(path.stem)
                unmatched += patient is None
                shipped_val += name == "val"
                col.add(path, source, patient or col.relative(path), split)
    col.notes.append(f"the shipped val/ ({shipped_val} images) is merged into train; validation is "
                     "re-split from train grouped by patient id")
    if unmatched:
        col.notes.append(f"{unmatched} file names carry no patient id; each is its own group")
    return col.scan()
