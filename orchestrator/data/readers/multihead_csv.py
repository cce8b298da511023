"""A multi-head CSV: `labels.csv` with `path`, one column per head, optional `group` and `split`.

    path,shape,texture,size,group
    images/00001.jpg,disc,stripes,31.25,obj0001

`path` is relative to the CSV's folder (absolute allowed); `group` (empty: the image's own path)
and `split` (train/val/test, any case, or empty) as in the folder layout's CSV.

A task that declares its heads (`multihead`) needs a column per head (named as the head, any
case); other columns are left alone, and a note names them. A task with no heads yet (the
`multihead/csv` placeholder) takes every column but path/group/split as a head
(`Task.with_heads`): a header may say its kind, `name:classification`, `name:regression` or
`name:regression[unit]`; else a column whose values are all finite numbers, with a fractional
value or more than MAX_INTEGER_CLASSES distinct ones, is a regression head, and any other a
classification head over its sorted distinct values.

A row whose value is not one of its head's classes, or is no finite number for a regression
head, is left out and listed as skipped (naming the head and the value); more than
MAX_BAD_FRACTION of the rows left out so is refused, as the integrity check refuses unreadable
files. The table carries each head's value as text in `target_<head>`; `label` is the first
classification head's class.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.data.integrity import MAX_BAD_FRACTION
from orchestrator.data.readers.walk import Collector
from orchestrator.data.table import Scan, target_column
from orchestrator.errors import ConfigError, DataError
from tasks.base import HEAD_KINDS, Head, Task

LABELS_CSV = "labels.csv"
EXPECTED = ("expected " + LABELS_CSV + " under {root} (multi-head CSV layout: columns path, one "
            "per head, optional group and split)")
RESERVED = ("path", "group", "split")
SPLIT_VALUES = ("train", "val", "test", "")
MAX_INTEGER_CLASSES = 20  # an all-integer column with more distinct values is a regression head
SHOW = 5  # rows named in a refusal
_HEADER = re.compile(r"^(?P<name>[^:\[\]]*?)\s*(?::\s*(?P<kind>[^\[\]]*?)\s*"
                     r"(?:\[(?P<unit>[^\]]*)\])?)?$")


@dataclass(frozen=True)
class _Column:
    """One head column of the CSV: its header as written, its name, its declared kind/unit."""

    header: str
    name: str
    kind: str | None  # None: read from the values
    unit: str | None  # None: none given


def read(task: Task, given: Path) -> Scan:
    """`given` is the CSV file itself or a folder holding `labels.csv` (up to 3 levels down)."""
    if given.is_file():
        col, csv = Collector(task, given.parent, given.parent), given
    else:
        col = Collector.found(task, given, EXPECTED, lambda d: (d / LABELS_CSV).is_file())
        csv = col.root / LABELS_CSV
    root = col.root
    frame = _load(csv)
    columns = _head_columns(frame, csv)
    if task.heads:
        heads, used = _declared(task, columns, list(frame.columns), csv)
        ignored = [c.header for c in columns if c not in used.values()]
        if ignored:
            col.notes.append(f"columns of {csv.name} that are no head of task {task.key}, left "
                             f"alone: {', '.join(ignored)}")
    else:
        heads, used = _discovered(columns, frame, csv)
        col.notes.append(f"heads from {csv.name}: " + ", ".join(map(_describe, heads)))
        task = _with_heads(task, heads, csv)
    bad = _collect(col, frame, csv, root, heads, used)
    _refuse_if_too_many(bad, len(frame), csv)
    return col.scan(task, extra=tuple(target_column(h.name) for h in heads))


def _load(csv: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {csv}: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda c: c.str.strip())
    lower = [c.lower() for c in frame.columns]
    if "path" not in lower:
        raise DataError(f"{csv} lacks the column path; columns found: "
                        f"{', '.join(frame.columns)}; expected path, one column per head, "
                        "optional group and split")
    for name in RESERVED:
        if lower.count(name) > 1:
            raise DataError(f"{csv} has the column {name} twice")
    return frame.rename(columns={c: c.lower() for c in frame.columns if c.lower() in RESERVED})


def _head_columns(frame: pd.DataFrame, csv: Path) -> list[_Column]:
    """Every column but path/group/split, its header parsed (`name[:kind[unit]]`)."""
    found = []
    for header in frame.columns:
        if header in RESERVED:
            continue
        match = _HEADER.match(header)
        kind = match["kind"].lower() if match and match["kind"] is not None else None
        if match is None or not match["name"] or (kind is not None and kind not in HEAD_KINDS):
            raise DataError(f"{csv}: column {header!r} is not `name`, `name:classification`, "
                            "`name:regression` or `name:regression[unit]`")
        if match["unit"] is not None and kind != "regression":
            raise DataError(f"{csv}: column {header!r}: only a regression head has a unit")
        found.append(_Column(header, match["name"], kind, match["unit"]))
    names = [c.name.lower() for c in found]
    twice = sorted({c.name for c in found if names.count(c.name.lower()) > 1})
    if twice:
        raise DataError(f"{csv}: more than one column for head(s) {', '.join(twice)}")
    return found


def _declared(task: Task, columns: list[_Column], found: list[str], csv: Path
              ) -> tuple[tuple[Head, ...], dict[str, _Column]]:
    """The task's own heads, each matched to its column (any case); a missing one is an error."""
    by_name = {c.name.lower(): c for c in columns}
    missing = [h.name for h in task.heads if h.name.lower() not in by_name]
    if missing:
        raise DataError(f"{csv} lacks column(s) {', '.join(missing)} for the heads of task "
                        f"{task.key}; columns found: {', '.join(found)}; expected path, "
                        f"{', '.join(h.name for h in task.heads)}, optional group and split")
    used = {}
    for head in task.heads:
        column = by_name[head.name.lower()]
        if column.kind is not None and column.kind != head.kind:
            raise DataError(f"{csv}: column {column.header!r} says {column.kind}, but task "
                            f"{task.key}'s head {head.name} is a {head.kind} head")
        used[head.name] = column
    return task.heads, used


def _discovered(columns: list[_Column], frame: pd.DataFrame, csv: Path
                ) -> tuple[tuple[Head, ...], dict[str, _Column]]:
    """A head per column: kind as the header says, else read from the values."""
    if not columns:
        raise DataError(f"{csv} has no head column: columns found: "
                        f"{', '.join(frame.columns)}; expected path, one column per head, "
                        "optional group and split")
    heads, used = [], {}
    for column in columns:
        values = [v for v in frame[column.header] if v != ""]
        kind = column.kind or _kind_of(values)
        try:
            if kind == "regression":
                head = Head(column.name, kind, unit=column.unit or "")
            else:
                classes = tuple(sorted(set(values)))
                if len(classes) < 2:
                    raise DataError(f"{csv}: column {column.header!r} holds {len(classes)} "
                                    f"distinct value(s) {list(classes)}; a classification "
                                    "head needs at least 2")
                head = Head(column.name, kind, classes=classes)
        except ConfigError as exc:
            raise DataError(f"{csv}: column {column.header!r}: {exc}") from None
        heads.append(head)
        used[head.name] = column
    return tuple(heads), used


def _kind_of(values: list[str]) -> str:
    """Regression when every value is a finite number and they are not a few integers."""
    numbers = [_number(v) for v in values]
    if not values or any(n is None for n in numbers):
        return "classification"
    fractional = any(not float(n).is_integer() for n in numbers)
    return "regression" if fractional or len(set(numbers)) > MAX_INTEGER_CLASSES else \
        "classification"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _with_heads(task: Task, heads: tuple[Head, ...], csv: Path) -> Task:
    try:
        return task.with_heads(heads)
    except ConfigError as exc:
        raise DataError(f"{csv}: {exc}") from None


def _describe(head: Head) -> str:
    if head.is_classification:
        return f"{head.name} (classification, {len(head.classes)} classes)"
    return f"{head.name} (regression{', ' + head.unit if head.unit else ''})"


def _collect(col: Collector, frame: pd.DataFrame, csv: Path, root: Path,
             heads: tuple[Head, ...], used: dict[str, _Column]) -> list[str]:
    """Add every row whose targets are all valid; returns `line N: reason` of the rest."""
    first = next(h for h in heads if h.is_classification)
    groups = frame["group"] if "group" in frame else pd.Series("", index=frame.index)
    splits = frame["split"] if "split" in frame else pd.Series("", index=frame.index)
    bad = []
    for line, (i, path_text) in zip(range(2, len(frame) + 2), frame["path"].items()):
        if not path_text:
            raise DataError(f"{csv} line {line}: empty path")
        split = splits[i].lower()
        if split not in SPLIT_VALUES:
            raise DataError(f"{csv} line {line}: split {splits[i]!r} is not one of train, val, "
                            "test or empty")
        path = (root / path_text).resolve()  # an absolute path in the CSV stays as it is
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        targets, reason = {}, None
        for head in heads:
            value, reason = _target(head, frame.at[i, used[head.name].header])
            if reason:
                break
            targets[target_column(head.name)] = value
        if reason:
            col.skip(path, reason)
            bad.append(f"line {line}: {reason}")
            continue
        label = targets[target_column(first.name)]
        col.add_labelled(path, label, label, groups[i] or rel, split, targets)
    return bad


def _target(head: Head, text: str) -> tuple[str, str | None]:
    """(the value to record, None) or ("", why the row is left out)."""
    if head.is_classification:
        if text in head.classes:
            return text, None
        same = [c for c in head.classes if c.lower() == text.lower()]
        if len(same) == 1:
            return same[0], None
        return "", (f"{head.name} {text!r} is not one of {', '.join(head.classes)}" if text
                    else f"{head.name} is empty")
    if _number(text) is None:
        return "", f"{head.name} {text!r} is not a finite number" if text else \
            f"{head.name} is empty"
    return text, None


def _refuse_if_too_many(bad: list[str], rows: int, csv: Path) -> None:
    if rows and len(bad) / rows > MAX_BAD_FRACTION:
        more = f", ... ({len(bad) - SHOW} more)" if len(bad) > SHOW else ""
        raise DataError(f"{len(bad)} of {rows} rows of {csv} ({100 * len(bad) / rows:.1f}%, "
                        f"more than {MAX_BAD_FRACTION:.0%}) have a target that is no class of "
                        f"its head or no number: {'; '.join(bad[:SHOW])}{more}; fix the CSV")
