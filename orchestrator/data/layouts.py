"""Readers for the real data-set layouts, keyed by `Task.layout`.

Every reader returns a `Scan` whose table follows `orchestrator.data.table`; the same code reads
a real download and the task's synthetic phantom. The readers live in
`orchestrator.data.readers`, one module per layout, sharing `readers.walk`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.data.readers import (blood_cell_all, brain_mri, chest_xray, folder, ham10000,
                                       multihead_csv)
from orchestrator.data.readers.walk import existing_dir
from orchestrator.data.table import Scan
from orchestrator.errors import ConfigError, DataError
from tasks.base import Task

Reader = Callable[[Task, Path], Scan]

LAYOUTS: dict[str, Reader] = {
    "brain_mri": brain_mri.read,
    "ham10000": ham10000.read,
    "blood_cell_all": blood_cell_all.read,
    "chest_xray": chest_xray.read,
    "folder": folder.read,
    "multihead_csv": multihead_csv.read,
}
CSV_LAYOUTS = frozenset({"folder", "multihead_csv"})  # `root` may be the CSV file itself


def read_layout(task: Task, root: str | Path) -> Scan:
    """Scan `root` with the reader for `task.layout`; DataError says what is wrong with the data."""
    if task.layout not in LAYOUTS:
        raise ConfigError(f"task {task.key}: unknown layout {task.layout!r}; "
                          f"known: {', '.join(LAYOUTS)}")
    path = Path(root).expanduser().resolve()
    if task.layout in CSV_LAYOUTS and path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"expected a folder or a .csv file, got {path}")
        return LAYOUTS[task.layout](task, path)
    return LAYOUTS[task.layout](task, existing_dir(path))
