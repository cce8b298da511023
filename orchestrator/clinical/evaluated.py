"""How the evaluation sees a task's heads (`evaluated_heads`): each head's columns in the
prediction matrix, how its figures and files are named, and whether a binary operating point is
chosen for it. The boundary where a task's shape is read; light (numpy only), so the report's
sections loop over the same heads as the evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.clinical import artifacts
from orchestrator.models.heads import column_slices
from tasks.base import Head, Task


@dataclass(frozen=True)
class EvaluatedHead:
    """One head as the evaluation sees it: its columns in the prediction matrix, how its
    figures are named, and whether a binary operating point is chosen for it."""

    head: Head
    columns: slice
    named: bool  # False: the single-label task's own answer, figures without a head name
    target: int | None = None  # its column in a multi-head target matrix (None: y is its own)
    positive: int | None = None  # a binary operating point's positive class (None: argmax)
    curves: bool = False  # ROC and PR curves drawn

    @property
    def prefix(self) -> str:
        return f"{self.head.name}_" if self.named else ""

    def targets(self, y: np.ndarray) -> np.ndarray:
        """This head's targets: class indices, or values in its unit."""
        y = np.asarray(y) if self.target is None else np.asarray(y)[:, self.target]
        return y.astype(np.int64) if self.head.is_classification else y.astype(np.float64)

    @property
    def truth_column(self) -> str:
        """Its truth in `test_predictions.csv`: `label`, or `<head>_true`."""
        return f"{self.head.name}_true" if self.named else "label"

    def truth(self, y: np.ndarray) -> list:
        """Its targets as a person reads them: class names, or values in its unit."""
        targets = self.targets(y)
        if self.head.is_classification:
            return [self.head.classes[k] for k in targets]
        return targets.tolist()

    def file(self, name: str) -> str:
        safe = "".join(ch if ch.isalnum() else "_" for ch in self.head.name)
        return artifacts.per_head(name, safe) if self.named else name

    def title(self, what: str) -> str:
        return f"{self.head.name}, {what}" if self.named else what


def evaluated_heads(task: Task) -> tuple[EvaluatedHead, ...]:
    """The boundary where a task's shape is read: every later step loops over these."""
    if task.heads:
        slices = column_slices(task)
        return tuple(EvaluatedHead(h, slices[h.name], named=True, target=i)
                     for i, h in enumerate(task.heads))
    (head,) = task.output_heads
    return (EvaluatedHead(head, slice(0, len(head.classes)), named=False,
                          positive=task.binary_positive if task.is_binary else None,
                          curves=True),)
