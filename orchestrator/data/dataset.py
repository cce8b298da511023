"""From a data folder (or the embedded phantom) to cached, integrity-checked, split arrays.

The one path every trial takes: read the layout -> group DICOM images without a group by
their patient's pseudonym -> decode once at the hashing resolution ->
leave out missing and unreadable files (refusing when too many are) -> make copies of an image
one group (dropping copies that would straddle a given held-out split) -> split, group-aware and
seeded -> decode at the trial's resolution -> write the manifest. Nothing here depends on the
trial's resolution but the pixels, so every resolution of a sweep gets the same split. The test
split is held here and handed out only by `arrays("test")`; trials never ask for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.data import cache, duplicates, header_groups, integrity, splits
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import ensure_phantom
from orchestrator.data.table import COLUMNS, Scan, summarize_skipped
from orchestrator.data.targets import head_columns, heads_from_record, target_matrix
from orchestrator.errors import ConfigError, DataError
from tasks.base import SPLITS, Task

Log = Callable[[str], None]
UNREADABLE_CSV = "unreadable.csv"  # files left out before splitting: missing or not an image
DUPLICATES_CSV = "duplicates.csv"  # every pair of copies, with where each copy went
LEFT_OUT_CSV = "duplicates_left_out.csv"  # copies left out: a copy sits in a held-out split


@dataclass
class PreparedData:
    """Cached images plus the manifest that says which row is in which split."""

    task: Task
    root: Path
    table: pd.DataFrame  # usable rows only; columns + `row` (index into `images`)
    images: np.ndarray  # (N, R, R, 3) uint8 memmap, indexed by table["row"]
    resolution: int
    fingerprint: str
    synthetic: bool
    manifest_path: Path
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # every pair + outcome
    dropped: pd.DataFrame = field(default_factory=pd.DataFrame)  # copies left out
    integrity: integrity.IntegrityReport | None = None
    notes: list[str] = field(default_factory=list)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, targets) of one split; images gathered into RAM in manifest order. Targets:
        class indices, int64 (N,); a multi-head task's `target_matrix`, float64 (N, H)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        rows = self.table[self.table["split"] == split]
        return self.images[rows["row"].to_numpy()], self.labels(split)

    def labels(self, split: str) -> np.ndarray:
        """Targets of one split (as `arrays`), without gathering its images."""
        return self.targets(self.table[self.table["split"] == split])

    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        """Targets (as `arrays`) of some rows of `table`, in their order."""
        if self.task.is_multihead:
            return target_matrix(rows, self.task)
        return np.array([self.task.class_index(c) for c in rows["label"]], dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return self.table.loc[self.table["split"] == split, "path"].tolist()

    def counts(self) -> pd.DataFrame:
        return pd.crosstab(self.table["split"], self.table["label"])

    @property
    def folds(self) -> int:
        """How many cross-validation folds the non-test rows carry (0: none made)."""
        made = self.table.get("fold", pd.Series(dtype=str))
        return int(made[made != ""].nunique())

    def rows_arrays(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(images, targets as `arrays`) of some rows of `table`, in their order."""
        return self.images[rows["row"].to_numpy()], self.targets(rows)

    @property
    def leaking_pairs(self) -> pd.DataFrame:
        """Duplicate pairs whose copies still sit in two different splits (kept on purpose)."""
        pairs = self.duplicates
        if pairs.empty:
            return pairs
        a, b = pairs["final_split_a"], pairs["final_split_b"]
        return pairs[(a != b) & (a != "dropped") & (b != "dropped")]


def prepare_dataset(
    task: Task,
    data_dir: str | Path | None,
    resolution: int,
    *,
    split_seed: int = 0,
    keep_duplicates: bool = False,
    duplicate_threshold: float = duplicates.DEFAULT_THRESHOLD,
    positive_class: str | None = None,
    cv_folds: int = 0,
    phantom_per_class: int = 40,
    phantom_format: str = "jpeg",
    manifest_dir: str | Path | None = None,
    log: Log = print,
) -> PreparedData:
    """Everything between a folder of images and arrays a trial can train on."""
    root = Path(data_dir) if data_dir else ensure_phantom(task, per_class=phantom_per_class,
                                                          fmt=phantom_format)
    found = screen(task, root, keep_duplicates=keep_duplicates,
                   duplicate_threshold=duplicate_threshold, positive_class=positive_class,
                   log=log)
    task, scan, table, digests = found.task, found.scan, found.table, found.digests
    pairs, dropped, report, copies = found.pairs, found.dropped, found.integrity, found.copies
    table = splits.assign_splits(table, task, split_seed)
    table = splits.assign_folds(table, cv_folds, split_seed)
    pairs = duplicates.pairs_outcome(pairs, table)
    _log_duplicates(pairs, dropped, keep_duplicates, copies, log)

    # Only the images kept, keyed by their own content: `load_recorded` (other resolutions,
    # the ensemble, a resume) computes the same key from the manifest and finds this cache.
    table = table.assign(row=np.arange(len(table)))
    kept = table["path"].tolist()
    cached = cache.load_or_build(kept, task.preprocessing, resolution,
                                 splits.fingerprint_of(kept, [digests[p] for p in kept]), log=log)
    table = table[cached.ok].reset_index(drop=True)
    fingerprint = splits.data_fingerprint(table, found.content_fingerprint, task)
    out = Path(manifest_dir) if manifest_dir else cache.cache_root() / "manifests" / fingerprint[:16]
    manifest = splits.write_manifest(table, out, scan.root, fingerprint, scan.synthetic,
                                     digests=[digests[p] for p in table["path"]], task=task)
    report.write_csv(out / UNREADABLE_CSV)
    _relative(pairs, scan.root, "path_a", "path_b").to_csv(out / DUPLICATES_CSV, index=False)
    _relative(dropped[list(COLUMNS)], scan.root, "path").to_csv(out / LEFT_OUT_CSV, index=False)
    return PreparedData(task=task, root=scan.root, table=table, images=cached.images,
                        resolution=resolution, fingerprint=fingerprint, synthetic=scan.synthetic,
                        manifest_path=manifest, duplicates=pairs, dropped=dropped,
                        integrity=report, notes=list(scan.notes))


@dataclass(frozen=True)
class Screened:
    """A data folder read and screened, before any split: usable rows only (missing and
    unreadable files left out, refused when too many are), copies of an image one group.
    What `prepare_dataset` splits, and what an external evaluation reads whole."""

    task: Task
    scan: Scan
    table: pd.DataFrame
    digests: dict[str, str]  # path -> content hash, every file read once
    content_fingerprint: str
    integrity: integrity.IntegrityReport
    copies: duplicates.Copies
    pairs: pd.DataFrame
    dropped: pd.DataFrame  # copies left out: a copy sits in a given held-out split


def screen(task: Task, root: str | Path, *, keep_duplicates: bool = False,
           duplicate_threshold: float = duplicates.DEFAULT_THRESHOLD,
           positive_class: str | None = None, whole: bool = False,
           log: Log = print) -> Screened:
    """Read the layout, group DICOM images by patient, leave out what does not decode, make
    copies one group. `whole`: every row is one held-out set (an external site's data), so
    no copy is left out for sitting beside a given split."""
    scan = read_layout(task, root)
    for line in summarize_skipped(scan.skipped) + scan.notes:
        log(line)
    task = with_positive_class(scan.task, positive_class)
    if scan.table.empty:
        raise DataError(f"no usable images for task {task.key} under {root}")
    listed = header_groups.groups_from_headers(scan.table, scan.root, cache.cache_root(), log)
    if whole:
        listed = listed.assign(split="test")
    paths = listed["path"].tolist()
    digests = dict(zip(paths, splits.file_digests(paths)))  # every file read once, here
    content_fp = splits.fingerprint_of(paths, list(digests.values()))
    reports = cache.cache_root() / "reports" / content_fp[:16]

    small = cache.load_or_build(paths, duplicates.hash_preprocessing(task.preprocessing),
                                duplicates.HASH_RESOLUTION, content_fp, log=log)
    report = integrity.check_integrity(listed, small.ok, scan.root,
                                       listing=reports / UNREADABLE_CSV, reasons=small.reasons)
    if len(report.lost):
        log(f"warning: {report.summary()}")
    table = listed.assign(row=np.arange(len(listed)))[small.ok].reset_index(drop=True)

    copies = duplicates.find_copies(table, small.images[table["row"].to_numpy()],
                                    threshold=duplicate_threshold,
                                    digests=[digests[p] for p in table["path"]], log=log)
    dropped = table.iloc[0:0]
    if not keep_duplicates:
        duplicates.check_clusters(table, copies, scan.root)
        table, dropped = duplicates.group_duplicates(table, copies.pairs)
    return Screened(task, scan, table, digests, content_fp, report, copies, copies.pairs,
                    dropped)


def load_recorded(
    task: Task,
    manifest: str | Path,
    resolution: int,
    *,
    data_dir: str | Path | None = None,
    log: Log = print,
) -> PreparedData:
    """The data exactly as a sweep recorded it: the manifest's rows, classes, groups and splits,
    never split again. Every file's bytes must still hash to what the manifest recorded, else a
    `DataError` names the files that changed: a changed image could carry a member's training
    image into the test split, unnoticed.

    `data_dir` replaces the recorded root (the data mounted elsewhere than during the sweep)."""
    manifest = Path(manifest)
    table, meta = splits.read_manifest(manifest, root=data_dir)
    root = Path(data_dir or meta["root"])
    if "hash" not in table or "classes" not in meta:
        raise DataError(f"{manifest} records no content hashes; it was written before MedSweep "
                        "recorded them: run the sweep again to ensemble it")
    if not root.is_dir():
        raise DataError(f"the data this sweep recorded is not at {root}; pass the folder where "
                        "it is now (--data-dir)")
    if task.layout == "folder":
        task = task.with_classes(tuple(meta["classes"]), meta.get("positive_class"))
    # DICOM files are read as the sweep read them (older manifests: the defaults)
    task = task.with_dicom(meta.get("dicom_window", "file"), int(meta.get("dicom_frame", -1)))
    if task.is_multihead:
        task = _recorded_heads(task, table, meta, manifest)
    paths = table["path"].tolist()
    digests = splits.file_digests(paths)
    _check_unchanged(table, digests, root, manifest)
    cached = cache.load_or_build(paths, task.preprocessing, resolution,
                                 splits.fingerprint_of(paths, digests), log=log)
    if not cached.ok.all():
        raise DataError(f"recorded images no longer decode: {', '.join(cached.failed[:5])}")
    table = table.drop(columns="hash").assign(row=np.arange(len(table)))
    log(f"data as recorded by the sweep ({meta['fingerprint'][:12]}): {len(table)} images, "
        "every file unchanged")
    return PreparedData(task=task, root=root, table=table, images=cached.images,
                        resolution=resolution, fingerprint=meta["fingerprint"],
                        synthetic=bool(meta.get("synthetic")), manifest_path=manifest)


def _recorded_heads(task: Task, table: pd.DataFrame, meta: dict, manifest: Path) -> Task:
    """The task with the heads the sweep recorded: those of the data where the task takes them
    from it (`multihead/csv`); a declared task's own heads, which must be the recorded ones."""
    if "heads" not in meta:
        raise DataError(f"{manifest} records no heads for the multi-head task {task.key}")
    recorded = heads_from_record(meta["heads"])
    if not task.heads:
        task = task.with_heads(recorded)
    elif task.heads != recorded:
        raise DataError(f"{manifest} recorded the heads "
                        f"{', '.join(h.name for h in recorded)} ({meta['heads']}); task "
                        f"{task.key} declares others now: {task.summary()['heads']}")
    missing = [c for c in head_columns(task) if c not in table]
    if missing:
        raise DataError(f"{manifest} lacks the target column(s) {', '.join(missing)}")
    return task


def _check_unchanged(table: pd.DataFrame, digests: list[str], root: Path, manifest: Path) -> None:
    changed = table.loc[table["hash"].to_numpy() != np.asarray(digests, dtype=object), "path"]
    if len(changed):
        names = [Path(os.path.relpath(p, root)).as_posix() for p in changed]
        more = f" (and {len(names) - 10} more)" if len(names) > 10 else ""
        raise DataError(f"the data changed since the sweep recorded it ({manifest}): "
                        f"{len(names)} file(s) are missing or hold other bytes: "
                        f"{', '.join(names[:10])}{more}. Its split, and every choice made on "
                        "it, no longer hold: restore those files or run a new sweep")


def with_positive_class(task: Task, positive_class: str | None) -> Task:
    """The task with the class that binary metrics, the threshold and the report call positive.

    Only tasks whose classes come from the data (the `folder` layout) take one from the user;
    the medical tasks' positive class is part of their definition."""
    if positive_class is None or positive_class == task.positive_class:
        return task
    if task.layout != "folder":
        raise ConfigError(f"--positive-class: task {task.key} defines its own positive class "
                          f"({task.positive_class!r}); the option is for your own folders or CSV")
    if positive_class not in task.classes:
        raise ConfigError(f"--positive-class {positive_class!r} is not a class of this data "
                          f"set; its classes: {', '.join(task.classes)}")
    return task.with_classes(task.classes, positive_class=positive_class)


def _relative(frame: pd.DataFrame, root: Path, *columns: str) -> pd.DataFrame:
    """Paths relative to the data root: the CSVs read the same wherever the data is mounted."""
    return frame.assign(**{c: [Path(os.path.relpath(p, root)).as_posix() for p in frame[c]]
                           for c in columns})


def _log_duplicates(pairs: pd.DataFrame, dropped: pd.DataFrame, kept: bool,
                    copies: duplicates.Copies, log: Log) -> None:
    if pairs.empty:
        return
    sizes = pd.Series(copies.cluster).value_counts()
    log(f"{len(pairs)} duplicate image pair(s) verified (exact or near copies, similarity >= "
        f"{copies.threshold} of {copies.candidates} candidate pairs; largest copy cluster "
        f"{sizes.iloc[0]} images), e.g. {pairs.iloc[0]['path_a']} ~ {pairs.iloc[0]['path_b']}")
    if copies.verified_apart:
        log(f"  {copies.verified_apart} more verified pair(s) left in different clusters: their "
            "images are not all copies of each other (complete linkage), so a split may "
            "separate them")
    if kept:
        straddle = (pairs["final_split_a"] != pairs["final_split_b"]).sum()
        log(f"warning: --keep-duplicates: {straddle} pair(s) straddle two splits; their test "
            "figures can be inflated")
    elif len(dropped):
        log(f"  copies grouped before splitting; {len(dropped)} image(s) left out because a "
            "copy sits in a given held-out split (e.g. an official test folder)")
    else:
        log("  copies grouped before splitting: no split separates them")
