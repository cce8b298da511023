"""Kaggle Brain Tumor MRI: `Training/<class>/*.jpg` and `Testing/<class>/*.jpg`.

Class folders use the current names (`glioma`, `notumor`, ...) or the older release's
(`glioma_tumor`, `no_tumor`, ...). The release carries no patient ids, so every image is its
own group.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.data.readers.walk import Collector, child_dir
from orchestrator.data.table import Scan
from tasks.base import Task

EXPECTED = ("expected Training/ and Testing/ under {root} (Kaggle Brain Tumor MRI layout: "
            "Training/<class>/*.jpg, Testing/<class>/*.jpg)")
SPLITS = {"training": "", "testing": "test"}  # folder -> split ("": the splitter decides)


def _is_layout(folder: Path) -> bool:
    return all(child_dir(folder, name) for name in SPLITS)


def read(task: Task, given: Path) -> Scan:
    col = Collector.found(task, given, EXPECTED, _is_layout)
    col.tidy(col.root, "image outside Training/ and Testing/")
    for name, split in SPLITS.items():
        for folder, source in col.class_folders(child_dir(col.root, name)):
            for path in col.class_images(folder):
                col.add(path, source, col.relative(path), split)
    col.notes.append("no patient ids in this data set: each image is its own group")
    return col.scan()
