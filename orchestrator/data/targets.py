"""A multi-head task's targets: from the table's `target_<head>` text columns to numbers.

`target_matrix(table, task)` is the one conversion every stage uses (training, evaluation, the
ensemble): a float64 (N, H) array, heads in `task.heads` order, each column the class index
(classification head) or the value (regression head). A manifest's JSON records a task's heads
as `Task.summary()["heads"]`; `heads_from_record` takes them back.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.data.table import target_column
from orchestrator.errors import DataError
from tasks.base import Head, Task


def head_columns(task: Task) -> list[str]:
    """The table columns of `task`'s heads, in head order (`target_<head>`)."""
    return [target_column(h.name) for h in task.heads]


def target_matrix(table: pd.DataFrame, task: Task) -> np.ndarray:
    """(N, H) float64: per row of `table` and head of `task`, the class index or the value."""
    if not task.heads:
        raise ValueError(f"task {task.key} has no heads: its targets are `label` alone")
    out = np.empty((len(table), len(task.heads)), dtype=np.float64)
    for j, head in enumerate(task.heads):
        column = target_column(head.name)
        if column not in table:
            raise DataError(f"the table has no column {column} for head {head.name} of task "
                            f"{task.key}; columns: {', '.join(table.columns)}")
        values = table[column].to_numpy()
        if head.is_classification:
            index = {c: i for i, c in enumerate(head.classes)}
            codes = [index.get(v, -1) for v in values]
            bad = [v for v, k in zip(values, codes) if k < 0]
            if bad:
                raise DataError(f"head {head.name}: {bad[0]!r} is not one of "
                                f"{', '.join(head.classes)} ({len(bad)} such row(s))")
            out[:, j] = codes
        else:
            numbers = [_finite(v) for v in values]
            bad = [v for v, x in zip(values, numbers) if x is None]
            if bad:
                raise DataError(f"head {head.name}: {bad[0]!r} is not a finite number "
                                f"({len(bad)} such row(s))")
            out[:, j] = numbers
    return out


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def heads_from_record(record: list[dict]) -> tuple[Head, ...]:
    """`Task.summary()["heads"]` (as a manifest records it) back to `Head`s."""
    return tuple(Head(**{**h, "classes": tuple(h.get("classes", ()))}) for h in record)
