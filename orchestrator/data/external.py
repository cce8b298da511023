"""An external site's data, read whole as one held-out set: the task's reader (any layout, a
CSV, DICOM), the same screening as a sweep's data (`dataset.screen`: unreadable files left out
and refused when too many are, copies of an image one group), no split. Its labels are checked
against the classes of the model it will evaluate, by name: a model's class order is its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator.data import duplicates, splits
from orchestrator.data.dataset import screen
from orchestrator.errors import DataError
from tasks.base import Task

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExternalData:
    """Usable rows of an external data set: `path` (absolute), `label`, `group`."""

    task: Task
    root: Path
    table: pd.DataFrame
    fingerprint: str  # content, labels and groups (`splits.data_fingerprint`)
    synthetic: bool
    left_out: int  # missing or unreadable files
    duplicate_pairs: int

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Class indices in the model's order (`classes`), int64."""
        index = {c: k for k, c in enumerate(classes)}
        return np.array([index[c] for c in self.table["label"]], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return self.table["group"].to_numpy()


class ClassMismatch(DataError):
    """The data's classes are not the model's: no figure would mean anything."""


def check_classes(data_classes: Sequence[str], model_classes: Sequence[str]) -> None:
    """Refuse, naming both lists, unless the data hold exactly the model's classes (any
    order): a class the model never learned has no probability column, and a class missing
    from the data leaves its recall and the macro figures undefined."""
    if set(data_classes) != set(model_classes):
        raise ClassMismatch(f"the data's classes ({', '.join(sorted(data_classes))}) are not "
                            f"the model's ({', '.join(model_classes)})")


def read_external(task: Task, root: str | Path, model_classes: Sequence[str], *,
                  duplicate_threshold: float = duplicates.DEFAULT_THRESHOLD,
                  log: Log = print) -> ExternalData:
    """Every usable row of `root` as one external test set, its classes checked against the
    model's before anything is predicted."""
    found = screen(task, root, duplicate_threshold=duplicate_threshold, whole=True, log=log)
    table = found.table
    check_classes(sorted(set(table["label"])), model_classes)
    if not len(table):
        raise DataError(f"no usable images under {root}")
    fingerprint = splits.data_fingerprint(table, found.content_fingerprint, found.task)
    if len(found.pairs):
        log(f"{len(found.pairs)} duplicate image pair(s) verified: each set of copies is one "
            "group, resampled together")
    return ExternalData(task=found.task, root=found.scan.root,
                        table=table[["path", "label", "group"]].reset_index(drop=True),
                        fingerprint=fingerprint, synthetic=found.scan.synthetic,
                        left_out=len(found.integrity.lost), duplicate_pairs=len(found.pairs))
