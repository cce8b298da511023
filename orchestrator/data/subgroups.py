"""Subgroup values of each image (`--subgroup COLUMN`): what the report measures the model on
separately, never what anything is chosen on.

Where a column can come from: any extra column of the user's CSV (folder layout: beyond
path,label,group,split); HAM10000's `sex`, `age` and `localization`; a DICOM file's
PatientSex, PatientAge and Manufacturer (read with `stop_before_pixels`, those three fields
only: never a name, an ID or a birth date). Ages become bands (`AGE_BANDS`), so a value is a
group of people, not one person. A value the data lack is `unknown`.

The values travel with the recorded split: `subgroup_<name>` columns of the manifest
(`splits.write_manifest`), absent when none was asked, so the ensemble reads them from the
same record the split came from.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from orchestrator.data.dicom import is_dicom_file
from orchestrator.data.splits import MANIFEST_CSV, MANIFEST_JSON, SUBGROUP_PREFIX, _write_atomic
from orchestrator.errors import ConfigError, DataError
from tasks.base import Task

PREFIX = SUBGROUP_PREFIX  # a manifest column: `subgroup_<name>`
UNKNOWN = "unknown"
# (lowest age in years, label): a band holds ages from its bound up to the next band's
AGE_BANDS = ((0.0, "<30"), (30.0, "30-44"), (45.0, "45-59"), (60.0, "60-74"), (75.0, "75+"))
DICOM_FIELDS = ("PatientSex", "PatientAge", "Manufacturer")  # never an identifier
HAM_FIELDS = ("sex", "age", "localization")
CSV_FIXED = ("path", "label", "group", "split")
AGE_FIELDS = frozenset({"age", "PatientAge"})
_DICOM_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def column(name: str) -> str:
    """The manifest column holding one subgroup's values."""
    return PREFIX + name


def recorded(table: pd.DataFrame) -> list[str]:
    """The subgroup names a table (a read manifest) carries, in its order."""
    return [c[len(PREFIX):] for c in table.columns if c.startswith(PREFIX)]


def age_band(years: float | str | None) -> str:
    """The band of an age in years (`AGE_BANDS`); `unknown` when there is none."""
    try:
        value = float(years)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(value) or value < 0:
        return UNKNOWN
    return [label for low, label in AGE_BANDS if value >= low][-1]


def value_order(value: str) -> tuple:
    """Sort key of a subgroup's values for tables: age bands youngest first, other values
    alphabetically, `unknown` last."""
    bands = [label for _, label in AGE_BANDS]
    if value in bands:
        return (0, bands.index(value), "")
    return (2, 0, "") if value == UNKNOWN else (1, 0, str(value))


def dicom_age_years(text: str) -> float | None:
    """A DICOM Age String (`045Y`, `006M`, `010W`, `003D`) in years; None if not one."""
    found = _DICOM_AGE.match(str(text or ""))
    return None if found is None else int(found.group(1)) * _UNIT_YEARS[found.group(2).upper()]


def layout_columns(task: Task, data: str | Path | None) -> tuple[str, ...]:
    """The columns `--subgroup` may name for this data, read cheaply (a CSV's header, the
    metadata's): checked before Ray starts. DICOM fields are always offered; data without
    DICOM files refuse them when read (`read_values`)."""
    own: tuple[str, ...] = ()
    if task.layout == "ham10000":
        own = HAM_FIELDS if data is None else tuple(
            c for c in HAM_FIELDS if c in _header(_ham_metadata(Path(data))))
    elif task.layout == "folder" and data is not None:
        csv = _folder_csv(Path(data))
        own = tuple(c for c in _header(csv) if c.lower() not in CSV_FIXED) if csv else ()
    return own + DICOM_FIELDS


def check_columns(asked: Sequence[str], available: Sequence[str], where: str) -> tuple[str, ...]:
    """The asked names as the data spell them (case aside); ConfigError naming the columns
    available for an unknown one."""
    by_lower = {c.lower(): c for c in available}
    unknown = [a for a in asked if a.lower() not in by_lower]
    if unknown:
        raise ConfigError(f"--subgroup {', '.join(unknown)}: not a column of {where}; "
                          f"available: {', '.join(available) or 'none'}")
    return tuple(dict.fromkeys(by_lower[a.lower()] for a in asked))


def read_values(task: Task, data: str | Path, paths: Sequence[str],
                names: Sequence[str]) -> dict[str, list[str]]:
    """name -> each path's value (`unknown` where the data lack one); age fields banded."""
    out: dict[str, list[str]] = {}
    headers: dict[str, dict[str, str]] | None = None
    for name in names:
        if name in DICOM_FIELDS:
            if headers is None:
                headers = _dicom_headers(paths)
            values = [headers.get(p, {}).get(name, "") for p in paths]
            if name == "PatientAge":
                values = [age_band(dicom_age_years(v)) if v else "" for v in values]
        elif task.layout == "ham10000":
            values = _ham_values(Path(data), paths, name)
        elif task.layout == "folder":
            values = _csv_values(Path(data), paths, name)
        else:
            raise ConfigError(f"--subgroup {name}: the {task.layout} layout has no such column")
        out[name] = [v.strip() or UNKNOWN if isinstance(v, str) else UNKNOWN for v in values]
    return out


def _header(csv: Path | None) -> list[str]:
    if csv is None or not csv.is_file():
        return []
    try:
        return [c.strip() for c in pd.read_csv(csv, nrows=0, dtype=str).columns]
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        return []


def _folder_csv(data: Path) -> Path | None:
    from orchestrator.data.readers.folder import LABELS_CSV

    if data.is_file():
        return data
    return data / LABELS_CSV if (data / LABELS_CSV).is_file() else None


def _ham_metadata(data: Path) -> Path | None:
    from orchestrator.data.readers.ham10000 import METADATA

    found = [p for p in (data, *data.glob("*/")) if (p / METADATA).is_file()]
    return found[0] / METADATA if found else None


def _ham_values(data: Path, paths: Sequence[str], name: str) -> list[str]:
    """By image id (the file's stem), as the reader matched them."""
    csv = _ham_metadata(data)
    if csv is None:
        raise DataError(f"--subgroup {name}: no HAM10000 metadata under {data}")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    by_id = dict(zip(frame["image_id"], frame[name]))
    values = [by_id.get(Path(p).stem, "") for p in paths]
    return [age_band(v) if v else "" for v in values] if name == "age" else values


def _csv_values(data: Path, paths: Sequence[str], name: str) -> list[str]:
    """By resolved path, as the folder reader resolved them; ages banded when numeric."""
    csv = _folder_csv(data)
    if csv is None:
        raise DataError(f"--subgroup {name}: no CSV under {data} (a folder of class folders "
                        "has no extra columns)")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    lower = {c.lower(): c for c in frame.columns}
    by_path = {str((csv.parent / p.strip()).resolve()): v
               for p, v in zip(frame[lower["path"]], frame[lower[name.lower()]])}
    values = [by_path.get(str(Path(p).resolve()), "") for p in paths]
    if name.lower() in AGE_FIELDS and all(_numeric(v) for v in values if v.strip()):
        return [age_band(v) if v.strip() else "" for v in values]
    return values


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dicom_headers(paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """path -> the three descriptive fields of each DICOM file (pixels and every other field
    left unread); DataError when no file is DICOM."""
    import pydicom

    out: dict[str, dict[str, str]] = {}
    for path in paths:
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(DICOM_FIELDS))
        except Exception:  # noqa: BLE001 - an unreadable header: its values are unknown
            out[path] = {}
            continue
        out[path] = {f: str(ds.get(f, "") or "").strip() for f in DICOM_FIELDS}
    if not out:
        raise DataError(f"--subgroup {', '.join(DICOM_FIELDS)}: none of the {len(paths)} "
                        "images is a DICOM file")
    return out


def with_values(table: pd.DataFrame, values: dict[str, list[str]]) -> pd.DataFrame:
    """The table with one `subgroup_<name>` column per subgroup (same row order)."""
    return table.assign(**{column(n): v for n, v in values.items()})


def record(manifest: Path, task: Task, data: str | Path | None, names: Sequence[str],
           log=print) -> dict[str, dict[str, int]]:
    """Add `subgroup_<name>` columns to a written manifest (its rows, split and fingerprint
    unchanged: a subgroup never shapes the split). `data`: the folder or CSV as given (None:
    the recorded root). Returns each subgroup's value counts, for the log."""
    import json
    import os

    csv = manifest if manifest.suffix == ".csv" else manifest / MANIFEST_CSV
    meta = json.loads((csv.parent / MANIFEST_JSON).read_text())
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    root = Path(meta["root"])
    source = Path(data) if data is not None else root
    paths = [os.path.normpath(root / p) for p in frame["path"]]
    names = check_columns(names, layout_columns(task, source), str(source))
    values = read_values(task, source, paths, names)
    _write_atomic(csv, with_values(frame, values).to_csv(index=False))
    counts = {n: dict(pd.Series(v).value_counts()) for n, v in values.items()}
    for name, found in counts.items():
        shown = ", ".join(f"{k} {n}" for k, n in sorted(found.items()))
        log(f"subgroup {name} recorded with the split: {shown}")
    return counts
