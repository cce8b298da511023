"""From a data folder (or the embedded phantom) to cached, split, integrity-checked arrays.

The one path every trial takes: read the layout -> split (group-aware, seeded) -> decode once into
the cache -> check integrity -> find cross-split duplicates -> write the manifest. The test split
is held here and handed out only by `arrays("test")`; trials never ask for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.data import cache, duplicates, integrity, splits
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import ensure_phantom
from orchestrator.data.table import summarize_skipped
from orchestrator.errors import DataError
from tasks.base import SPLITS, Task

Log = Callable[[str], None]


@dataclass
class PreparedData:
    """Cached images plus the manifest that says which row is in which split."""

    task: Task
    root: Path
    table: pd.DataFrame  # usable rows only, in cache order of `row`; columns + `row`
    images: np.ndarray  # (N, R, R, 3) uint8 memmap, indexed by table["row"]
    resolution: int
    fingerprint: str
    synthetic: bool
    manifest_path: Path
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, class indices) of one split; images gathered into RAM in manifest order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        rows = self.table[self.table["split"] == split]
        return self.images[rows["row"].to_numpy()], self.labels(split)

    def labels(self, split: str) -> np.ndarray:
        """Class indices of one split, without gathering its images."""
        rows = self.table[self.table["split"] == split]
        return np.array([self.task.class_index(c) for c in rows["label"]], dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return self.table.loc[self.table["split"] == split, "path"].tolist()

    def counts(self) -> pd.DataFrame:
        return pd.crosstab(self.table["split"], self.table["label"])


def prepare_dataset(
    task: Task,
    data_dir: str | Path | None,
    resolution: int,
    *,
    split_seed: int = 0,
    drop_duplicates: bool = False,
    phantom_per_class: int = 40,
    manifest_dir: str | Path | None = None,
    log: Log = print,
) -> PreparedData:
    """Everything between a folder of images and arrays a trial can train on."""
    root = Path(data_dir) if data_dir else ensure_phantom(task, per_class=phantom_per_class)
    scan = read_layout(task, root)
    for line in summarize_skipped(scan.skipped) + scan.notes:
        log(line)
    task = scan.task
    if scan.table.empty:
        raise DataError(f"no usable images for task {task.key} under {root}")
    table = splits.assign_splits(scan.table, task, split_seed)

    content_fp = splits.content_fingerprint(table["path"].tolist())
    cached = cache.load_or_build(table["path"].tolist(), task.preprocessing, resolution,
                                 content_fp, log=log)
    report = integrity.check_integrity(table, cached.ok, scan.root)
    for line in report.warnings():
        log(f"warning: {line}")
    table = table.assign(row=np.arange(len(table)))[cached.ok].reset_index(drop=True)

    hashes = duplicates.perceptual_hashes(cached.images)[table["row"].to_numpy()]
    dups = duplicates.find_cross_split_duplicates(table, hashes)
    if len(dups):
        log(f"warning: {len(dups)} image pair(s) are duplicates across splits, e.g. "
            f"{dups.iloc[0]['path_a']} ~ {dups.iloc[0]['path_b']}")
        if drop_duplicates:
            table, dropped = duplicates.drop_later_duplicates(table, dups)
            log(f"dropped {len(dropped)} duplicate(s) from their later split")
        else:
            log("  (drop them from the later split with --drop-duplicates)")

    fingerprint = splits.data_fingerprint(table, content_fp)
    out = Path(manifest_dir) if manifest_dir else cache.cache_root() / "manifests" / fingerprint[:16]
    manifest = splits.write_manifest(table, out, scan.root, fingerprint, scan.synthetic)
    return PreparedData(task=task, root=scan.root, table=table, images=cached.images,
                        resolution=resolution, fingerprint=fingerprint, synthetic=scan.synthetic,
                        manifest_path=manifest, duplicates=dups, notes=list(scan.notes))
