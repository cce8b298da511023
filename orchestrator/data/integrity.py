"""Are all the images a data set lists really there and readable? Checked before any split.

Unreadable and missing files (a metadata row with no image, as HAM10000 has) are found when the
images are decoded, listed by name, and left out before splitting, so no split inherits a hole.
More than `max_bad_fraction` of the whole data set, or of any one class, usually means a folder
is not mounted or a download was cut short, and a score on what is left would mislead: that is a
`DataError` listing the files, never a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.errors import DataError

SHOW = 5  # file names named in a printed line
REFUSAL_SHOW = 20  # file names named in a refusal (the CSV holds them all)
MAX_BAD_FRACTION = 0.05
LOST_COLUMNS = ["path", "label", "split", "reason", "detail"]


@dataclass(frozen=True)
class IntegrityReport:
    """What the data set listed and what of it could not be used, by file (relative to root)."""

    expected: int
    lost: pd.DataFrame  # LOST_COLUMNS; reason is "missing" (not on disk) or "unreadable",
    # detail what the decoder said (a DICOM report without pixels, a multi-frame file, ...)
    by_class: pd.DataFrame  # index label; columns expected, lost, lost_fraction

    @property
    def lost_fraction(self) -> float:
        return len(self.lost) / self.expected if self.expected else 0.0

    def summary(self) -> str:
        """One line for the console: the count and the first few names ('' when none)."""
        if self.lost.empty:
            return ""
        kinds = ", ".join(f"{n} {reason}" for reason, n in
                          self.lost["reason"].value_counts().sort_index().items())
        return (f"{len(self.lost)} of {self.expected} images left out before splitting "
                f"({kinds}): {_first(self.named(), SHOW)}")

    def named(self) -> list[str]:
        """Each lost file, with the decoder's reason where it gave one."""
        return [f"{path} ({detail})" if detail else path
                for path, detail in zip(self.lost["path"], self.lost["detail"])]

    def lines(self) -> list[str]:
        """A printable table: class, expected, lost."""
        rows = [("class", "expected", "lost")]
        rows += [(str(label), str(int(r.expected)), str(int(r.lost)))
                 for label, r in self.by_class.iterrows()]
        rows.append(("total", str(self.expected), str(len(self.lost))))
        return ["  ".join([r[0].ljust(12)] + [c.rjust(8) for c in r[1:]]) for r in rows]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lost.to_csv(path, index=False)
        return path


def check_integrity(table: pd.DataFrame, ok: np.ndarray, root: str | Path,
                    max_bad_fraction: float = MAX_BAD_FRACTION,
                    listing: str | Path | None = None,
                    reasons: dict[str, str] | None = None) -> IntegrityReport:
    """Find the rows of `table` that are missing or did not decode (`ok`: the cache's per-row
    decode flag, aligned with `table`); refuse when the whole set or a class lost too many.

    `listing`: where the refusal writes the full list of lost files (a CSV), so the error can
    name the first few and point at the rest. `reasons`: path -> why it did not decode (the
    cache's `reasons`), written as the `detail` of each unreadable file."""
    ok = np.asarray(ok, dtype=bool)
    if len(ok) != len(table):
        raise ValueError(f"ok has {len(ok)} entries for a table of {len(table)} rows")
    paths = table["path"].to_numpy()
    on_disk = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    bad = ~(on_disk & ok)
    lost = pd.DataFrame({
        "path": [Path(os.path.relpath(p, root)).as_posix() for p in paths[bad]],
        "label": table["label"].to_numpy()[bad],
        "split": table["split"].to_numpy()[bad],
        "reason": np.where(on_disk[bad], "unreadable", "missing"),
        "detail": [(reasons or {}).get(p, "") if disk else "" for p, disk in
                   zip(paths[bad], on_disk[bad])],
    }, columns=LOST_COLUMNS)
    by_class = pd.DataFrame({"expected": table.groupby("label").size(),
                             "lost": pd.Series(bad, index=table.index).groupby(
                                 table["label"]).sum()}).astype(int)
    by_class["lost_fraction"] = by_class["lost"] / by_class["expected"]
    report = IntegrityReport(expected=len(table), lost=lost, by_class=by_class)
    _refuse_if_too_many(report, max_bad_fraction, root, listing)
    return report


def _refuse_if_too_many(report: IntegrityReport, limit: float, root: str | Path,
                        listing: str | Path | None) -> None:
    over = [f"the whole data set: {len(report.lost)} of {report.expected} "
            f"({100 * report.lost_fraction:.1f}%)"] if report.lost_fraction > limit else []
    over += [f"class {label}: {int(r.lost)} of {int(r.expected)} ({100 * r.lost_fraction:.1f}%)"
             for label, r in report.by_class.iterrows() if r.lost_fraction > limit]
    if not over:
        return
    missing = (report.lost["reason"] == "missing").any()
    hint = ("check the folder is mounted and complete" if missing
            else "check the files are whole images (a cut-short download or copy?)")
    where = ""
    if listing is not None:
        where = f"; every file is listed in {report.write_csv(listing)}"
    raise DataError(f"too many images missing or unreadable under {root} (more than "
                    f"{limit:.0%}): {'; '.join(over)}; {hint}. Files: "
                    f"{_first(report.named(), REFUSAL_SHOW)}{where}")


def _first(names: list[str], show: int) -> str:
    more = f", ... ({len(names) - show} more)" if len(names) > show else ""
    return ", ".join(names[:show]) + more
