"""Blood Cell Cancer [ALL]: `Original/<Benign|Early|Pre|Pro>/*.jpg` beside a `Segmented/` copy.

`Segmented/` holds cut-out versions of the same images, so it is skipped, never merged. The
other Kaggle release puts the class folders (`Benign`, `[Malignant] Pre-B`, ...) directly under
its root; that is read the same way. Patients are grouped where a file name carries an id.
"""
from __future__ import annotations

import re
from pathlib import Path

from orchestrator.data.readers.walk import Collector, child_dir, subdirs
from orchestrator.data.table import Scan
from tasks.base import Task

EXPECTED = ("expected Original/<class>/ under {root} (Blood Cell Cancer [ALL] layout: "
            "Original/{{Benign,Early,Pre,Pro}}/*.jpg), or class folders named like those")
PATIENT = re.compile(r"(?i)(?:patient|pat|pt)[-_ ]?(\d+)")


def patient_group(name: str) -> str | None:
    """`patient<N>` from a file name that carries a patient id, else None."""
    match = PATIENT.search(name)
    return f"patient{int(match.group(1))}" if match else None


def _has_original(folder: Path) -> bool:
    return child_dir(folder, "Original") is not None


def read(task: Task, given: Path) -> Scan:
    def has_class_folders(folder: Path) -> bool:
        return sum(task.canonical_source_label(d.name) is not None for d in subdirs(folder)) >= 2

    col = Collector.found(task, given, EXPECTED, _has_original, has_class_folders)
    classes_at = child_dir(col.root, "Original") or col.root
    if classes_at != col.root:
        col.tidy(col.root, "image outside Original/")
        segmented = child_dir(col.root, "Segmented")
        if segmented:
            col.skip(segmented, "Segmented/ is a derived copy of Original/")
    with_id = total = 0
    for folder, source in col.class_folders(classes_at):
        for path in col.class_images(folder):
            group = patient_group(path.name)
            with_id, total = with_id + (group is not None), total + 1
            col.add(path, source, group or col.relative(path), "")
    col.notes.append(f"{with_id} of {total} images carry a recoverable patient id and are grouped "
                     "by patient; the rest are split per image, stratified by class")
    return col.scan()
