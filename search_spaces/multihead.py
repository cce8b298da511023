"""Multi-head search (shape, texture and size from one image): a first, plain space.

Registered so the search-space registry covers every task (`search_spaces.SPACES`); the
multi-head losses are per head (`Task.heads`), so the task-level loss choice is cross entropy
alone. The sweep's own multi-head space replaces this one.
"""
from __future__ import annotations

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("cross_entropy",),
    note="multi-head: per-head losses from the task record",
)
