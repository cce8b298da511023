"""Are all the images a split expects really there and readable?

A few lost images are reported and left out; more than a few in any split usually means a folder
is not mounted or a download was cut short, and a score on what is left would mislead: that is a
`DataError` naming the split, the share lost and the folder(s) to look at, never a traceback.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.errors import DataError
from tasks.base import SPLITS

SHOW = 5  # file names listed per warning


@dataclass(frozen=True)
class SplitIntegrity:
    """What one split expected and what it lost, by file name (relative to the data root)."""

    split: str
    expected: int
    missing: tuple[str, ...]  # not on disk
    unreadable: tuple[str, ...]  # on disk, did not decode

    @property
    def found(self) -> int:
        return self.expected - len(self.missing)

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.unreadable)

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


@dataclass(frozen=True)
class IntegrityReport:
    splits: tuple[SplitIntegrity, ...]

    def warnings(self) -> list[str]:
        """One line per split that lost images, naming the first few."""
        return [_describe(s) for s in self.splits if s.lost]

    def lines(self) -> list[str]:
        """A printable table: split, expected, found, lost."""
        rows = [("split", "expected", "found", "lost")]
        rows += [(s.split or "(none)", str(s.expected), str(s.found), str(s.lost))
                 for s in self.splits]
        return ["  ".join([r[0].ljust(8)] + [c.rjust(8) for c in r[1:]]) for r in rows]


def check_integrity(table: pd.DataFrame, ok: np.ndarray, root: str | Path,
                    max_bad_fraction: float = 0.05) -> IntegrityReport:
    """Count missing and unreadable images per split; refuse a split that lost too many.

    `ok` is the cache's per-row decode flag, aligned with `table`.
    """
    ok = np.asarray(ok, dtype=bool)
    if len(ok) != len(table):
        raise ValueError(f"ok has {len(ok)} entries for a table of {len(table)} rows")
    paths = table["path"].to_numpy()
    on_disk = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    order = {s: i for i, s in enumerate(SPLITS)}
    report = IntegrityReport(tuple(
        _split_integrity(split, paths[rows], on_disk[rows], ok[rows], root)
        for split, rows in sorted(table.groupby("split").indices.items(),
                                  key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    ))
    too_many = [s for s in report.splits if s.lost_fraction > max_bad_fraction]
    if too_many:
        details = "; ".join(_refusal(s, paths, table, on_disk, ok) for s in too_many)
        raise DataError(f"too many images lost (more than {max_bad_fraction:.0%} of a split): "
                        f"{details}")
    return report


def _split_integrity(split: str, paths: np.ndarray, on_disk: np.ndarray, ok: np.ndarray,
                     root: str | Path) -> SplitIntegrity:
    def names(mask: np.ndarray) -> tuple[str, ...]:
        return tuple(os.path.relpath(p, root) for p in paths[mask])

    return SplitIntegrity(split=split, expected=len(paths), missing=names(~on_disk),
                          unreadable=names(on_disk & ~ok))


def _refusal(s: SplitIntegrity, paths: np.ndarray, table: pd.DataFrame, on_disk: np.ndarray,
             ok: np.ndarray) -> str:
    """'val: 7 of 40 images (17.5%) missing or unreadable, mostly under DIR; what to check'."""
    bad = (table["split"].to_numpy() == s.split) & ~(on_disk & ok)
    folders = Counter(os.path.dirname(p) for p in paths[bad]).most_common(2)
    where = ", ".join(folder for folder, _ in folders)
    hint = ("check the folder is mounted and complete" if s.missing
            else "check the files are whole images (a cut-short download or copy?)")
    return (f"{s.split}: {s.lost} of {s.expected} images ({100 * s.lost_fraction:.1f}%) "
            f"missing or unreadable, mostly under {where}; {hint}")


def _describe(s: SplitIntegrity) -> str:
    parts = [f"{len(files)} {kind} ({_first(files)})"
             for kind, files in (("missing", s.missing), ("unreadable", s.unreadable)) if files]
    return f"{s.split}: {s.lost} of {s.expected} images lost: " + ", ".join(parts)


def _first(names: tuple[str, ...]) -> str:
    return ", ".join(names[:SHOW]) + (", ..." if len(names) > SHOW else "")
