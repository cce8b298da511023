"""What every reader shares: finding the layout root, walking folders, collecting rows.

Real downloads are untidy (nested copies, `__MACOSX/`, `.DS_Store`, upper-case extensions,
stray text files); these helpers tolerate that and record each thing not used as `Skipped`,
so a user can see exactly what a scan left out and why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.data.dicom import is_dicom_file
from orchestrator.data.table import (IMAGE_EXTENSIONS, JUNK_DIRS, JUNK_NAMES, OWN_FILES,
                                     PHANTOM_MARKER, Scan, Skipped, make_table)
from orchestrator.errors import DataError
from tasks.base import Task

SEARCH_DEPTH = 3  # how far below the given folder a layout root may sit
NESTED_COPY = "nested copy of the layout"
JUNK_FOLDER = "junk folder (OS or tool metadata)"


def existing_dir(root: str | Path) -> Path:
    """The absolute folder to scan, or a DataError saying why it is not one."""
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(f"data folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"expected a data folder, got the file {path}")
    return path


def is_junk_dir(name: str) -> bool:
    return name.lower() in JUNK_DIRS or name.startswith(".")


def file_skip_reason(path: str | Path) -> str | None:
    """Why a file is not an image to use (None: it is one): an image by its extension, or a
    DICOM file by its first bytes, whatever its name."""
    name = Path(path).name
    if name.lower() in JUNK_NAMES or name.startswith("._"):
        return "junk file (OS metadata)"
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS or is_dicom_file(path):
        return None
    return f"not an image ({suffix or 'no extension'})"


def subdirs(folder: Path) -> list[Path]:
    """Sorted child folders, junk folders left out."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not is_junk_dir(e.name))


def child_dir(folder: Path, name: str) -> Path | None:
    """The child folder called `name`, matched case-insensitively."""
    return next((d for d in subdirs(folder) if d.name.lower() == name.lower()), None)


def find_layout_root(root: Path, expected: str, *is_layout: Callable[[Path], bool]
                     ) -> tuple[Path, list[Path]]:
    """The shallowest folder at most SEARCH_DEPTH below `root` that is a layout, and other copies.

    Kaggle zips often put the layout one or two levels down, sometimes twice; the shallowest
    copy is read and the others are reported, never merged. With several tests, the first one
    that matches anywhere decides (a preferred layout before a fallback). `expected` is the
    error message when nothing matches, with `{root}` in it.
    """
    levels, level = [root], [root]
    for _ in range(SEARCH_DEPTH):
        level = [c for d in level for c in subdirs(d)]
        levels += level
    for test in is_layout:
        matches = [d for d in levels if test(d)]
        if matches:
            return matches[0], matches[1:]
    raise DataError(expected.format(root=root) + f"; searched {SEARCH_DEPTH} levels down")


@dataclass
class Collector:
    """Rows, skipped items and notes of one scan, built into a `Scan` at the end."""

    task: Task
    given: Path  # what the user pointed at
    root: Path  # the layout root found under it
    exclude: frozenset[Path] = frozenset()  # nested copies: never walked
    rows: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def found(cls, task: Task, given: Path, expected: str, *is_layout: Callable[[Path], bool]
              ) -> "Collector":
        """Locate the layout under `given`; other copies are skipped and excluded from walks."""
        root, copies = find_layout_root(given, expected, *is_layout)
        collector = cls(task, given, root, frozenset(copies))
        for copy in copies:
            collector.skip(copy, NESTED_COPY)
        return collector

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(Skipped(str(path), reason))

    def add(self, path: Path, source: str, group: str, split: str) -> None:
        """One image of `source` label; left out (and said so) where the variant drops it."""
        label = self.task.class_of(source)
        if label is None:
            self.skipped.append(Skipped(str(path), f"class {source} left out by variant "
                                                   f"{self.task.variant}", chosen=True))
        else:
            self.add_labelled(path, label, source, group, split)

    def add_labelled(self, path: Path, label: str, source: str, group: str, split: str,
                     targets: dict[str, str] | None = None) -> None:
        """One image whose class is already known (the folder reader's own labels);
        `targets`: a multi-head row's `target_<head>` values."""
        self.rows.append({"path": str(path), "label": label, "source_label": source,
                          "group": group, "split": split, **(targets or {})})

    def images(self, folder: Path, known: frozenset[Path] = frozenset()) -> list[Path]:
        """Image files under `folder` (any depth, sorted); everything else is recorded as skipped.

        `known` files (a metadata CSV) are neither images nor reported.
        """
        found = []
        for here, dirs, files in os.walk(folder):
            base = Path(here)
            for name in sorted(dirs):
                if is_junk_dir(name):
                    self.skip(base / name, JUNK_FOLDER)
            dirs[:] = sorted(d for d in dirs if not is_junk_dir(d) and base / d not in self.exclude)
            for name in files:
                if base / name in known or (name in OWN_FILES and base == self.root):
                    continue
                reason = file_skip_reason(base / name)
                if reason:
                    self.skip(base / name, reason)
                else:
                    found.append(base / name)
        return sorted(found)

    def tidy(self, folder: Path, image_reason: str) -> None:
        """Record junk folders and loose files in `folder`, which should hold only folders."""
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and is_junk_dir(entry.name):
                self.skip(entry, JUNK_FOLDER)
            elif entry.is_file() and entry.name not in OWN_FILES:
                self.skip(entry, file_skip_reason(entry) or image_reason)

    def class_folders(self, parent: Path) -> list[tuple[Path, str]]:
        """(folder, source label) for each class folder in `parent`; loose files are skipped.

        An unknown folder name is an error, not a skip: a typo would otherwise silently drop
        a class.
        """
        self.tidy(parent, "image outside a class folder")
        found = []
        for folder in subdirs(parent):
            if folder in self.exclude:
                continue
            source = self.task.canonical_source_label(folder.name)
            if source is None:
                valid = ", ".join(self.task.source_labels)
                raise DataError(f"unknown class folder {folder}; valid class folder names: "
                                f"{valid}{_alias_hint(self.task)}")
            found.append((folder, source))
        return found

    def class_images(self, folder: Path) -> list[Path]:
        """Images of one class folder; an empty class folder is an error naming it."""
        images = self.images(folder)
        if not images:
            raise DataError(f"class folder {folder} holds no images")
        return images

    def scan(self, task: Task | None = None, extra: tuple[str, ...] = ()) -> Scan:
        """The finished scan; `task` replaces the collector's (the folder reader's classes),
        `extra` names the rows' columns beyond `COLUMNS` (a multi-head task's targets)."""
        if not self.rows:
            raise DataError(f"no usable images under {self.root}")
        synthetic = any((p / PHANTOM_MARKER).exists() for p in (self.root, self.given))
        return Scan(task=task or self.task, root=self.root, table=make_table(self.rows, extra),
                    skipped=list(dict.fromkeys(self.skipped)), synthetic=synthetic,
                    notes=self.notes)


def _alias_hint(task: Task) -> str:
    if not task.label_aliases:
        return ""
    return f" (also accepted: {', '.join(sorted(task.label_aliases))})"
