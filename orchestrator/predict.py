"""`python -m orchestrator.predict MODEL_URI FOLDER_OR_CSV --out predictions.csv`: run a
registered MedSweep model over new images, with the same pyfunc a server runs.

A folder is searched recursively for images; a CSV names them in its `path` column (relative
paths are read from the CSV's folder). Files that are missing, do not decode or are outside the
model's input limits (pixels, shortest side) are listed with the reason and skipped; every
other image gets a row: path, calibrated probabilities, decision, confidence, refer and, for a
model logged with prediction sets, `prediction_set` (JSON list text of the classes, most
probable first) and `set_size` (each `<head>_`-named for a multi-head model), and for a model
logged with an OOD fit `out_of_distribution` and `ood_score`: the model's own served columns
(`orchestrator.serving.contract`).

`--per-group COLUMN` (a CSV source) adds `<out>_per_group.csv`: one row per value of the CSV's
COLUMN (a patient, a lesion), the group's images combined by the model's recorded rule
(`orchestrator.serving.per_group`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from orchestrator.serving import inputs
from orchestrator.data.readers.walk import file_skip_reason
from orchestrator.data.table import IMAGE_EXTENSIONS
from orchestrator import console
from orchestrator.console import add_tracking_uri, add_verbose
from orchestrator.errors import ConfigError, DataError, MedSweepError

Log = Callable[[str], None]
DEFAULT_BATCH = 32


def image_paths(source: Path) -> tuple[list[str], Path]:
    """(absolute image paths, the folder output paths are written relative to)."""
    if source.is_dir():
        found = sorted(p for p in source.rglob("*")
                       if p.is_file() and file_skip_reason(p) is None)
        if not found:
            raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))} "
                            "or DICOM by its content)")
        return [str(p) for p in found], source
    if source.suffix.lower() == ".csv" and source.is_file():
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        if "path" not in frame.columns:
            raise DataError(f"{source}: no `path` column (columns: {list(frame.columns)})")
        if frame.empty:
            raise DataError(f"{source}: no rows")
        base = source.parent
        return [str(p if Path(p).is_absolute() else base / p) for p in frame["path"]], base
    raise DataError(f"{source}: neither a folder of images nor a .csv with a `path` column")


def predict_files(model, paths: list[str], root: Path, batch_size: int = DEFAULT_BATCH,
                  progress: console.Progress | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per readable image, the unreadable files); paths relative to `root`."""
    def shown(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    limits, reading = _limits(model), _reading(model)
    readable, unreadable, reasons = [], [], []
    for row, path in enumerate(paths):
        try:  # the model's own door: a header over its pixel limit is never decoded
            inputs.read_checked(path, row, limits, reading)
            readable.append(path)
        except inputs.InputError as err:
            unreadable.append(path)
            reasons.append(str(err).split(": ", 1)[1].replace(path, "the file"))
    frames = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        answer = model.predict(pd.DataFrame({"path": chunk}))
        frames.append(answer.assign(path=[shown(p) for p in chunk]))
        if progress is not None:
            progress.update(start + len(chunk))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not out.empty:
        out = out[["path"] + [c for c in out.columns if c != "path"]]
    skipped = pd.DataFrame({"path": [shown(p) for p in unreadable], "reason": reasons})
    return out, skipped


def _limits(model) -> inputs.InputLimits:
    """The input limits the model's spec records (the defaults for a model that is not a
    MedSweep ensemble's pyfunc)."""
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if hasattr(python_model, "serving_spec"):
        return python_model.serving_spec().input_limits
    return inputs.InputLimits()


def _reading(model):
    """How the model reads files (its recorded preprocessing: DICOM window and frame)."""
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    return getattr(python_model, "preprocessing", None) or inputs.READING


def group_of(source: Path, column: str) -> dict[str, str]:
    """Each image's group from the source CSV's `column`, keyed as the output rows name the
    images (relative to the CSV's folder); checked before any model is loaded."""
    if not (source.suffix.lower() == ".csv" and source.is_file()):
        raise ConfigError(f"--per-group {column}: needs a CSV of images with a `{column}` "
                          f"column; {source} is not one")
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    if column not in frame.columns:
        raise ConfigError(f"--per-group {column}: {source} has no `{column}` column (columns: "
                          f"{', '.join(frame.columns)})")
    base = source.parent
    return {Path(os.path.relpath(p if Path(p).is_absolute() else base / p, base)).as_posix(): g
            for p, g in zip(frame["path"], frame[column])}


def _write_per_group(model, rows: pd.DataFrame, groups: dict[str, str], column: str,
                     out_path: Path, log: Log) -> Path:
    """The per-group file beside the per-image one, and what it used, in a line or two."""
    from orchestrator.serving.per_group import per_group, unrecorded

    spec = model.unwrap_python_model().serving_spec()
    if unrecorded(spec):
        log("the model records no group rule (logged before rules were chosen, or its held-out "
            "groups were single images): images combined by their mean")
    frame = per_group(rows, [groups[p] for p in rows["path"]], spec)
    path = out_path.with_name(out_path.stem + "_per_group.csv")
    _write_atomic(frame, path)
    refer = [c for c in frame.columns if c == "refer" or c.endswith("_refer")]
    referred = "; ".join(f"{int(frame[c].sum())} referred" + (f" ({c[:-6]})" if c != "refer"
                                                               else "") for c in refer)
    log(f"wrote {len(frame)} group(s) by `{column}` to {path}"
        + (f" ({referred})" if referred else ""))
    return path


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def run(model_uri: str, source: str, out: str, *, tracking_uri: str | None = None,
        batch_size: int = DEFAULT_BATCH, per_group: str | None = None,
        log: Log = print) -> pd.DataFrame:
    from orchestrator import tracking
    from orchestrator.tracking import ensemble_model

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    paths, root = image_paths(Path(source))
    groups = group_of(Path(source), per_group) if per_group else None
    uri = tracking_uri or tracking.default_tracking_uri()
    console.import_tensorflow()  # the model's, without its C++ start-up lines unless verbose
    try:
        model = ensemble_model.load(model_uri, uri)
    except Exception as err:  # MLflow's message names what is missing; no traceback
        raise ConfigError(f"cannot load {model_uri} from {uri}: "
                          f"{str(err).splitlines()[0]}") from None
    log(f"{model_uri}: {len(paths)} file(s) from {source}")
    rows, skipped = predict_files(model, paths, root, batch_size, console.Progress(len(paths), "predicting", "images", "img/s"))
    out_path = Path(out)
    _write_atomic(rows, out_path)
    if len(skipped):
        listed = out_path.with_name(out_path.stem + "_unreadable.csv")
        _write_atomic(skipped, listed)
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        log(f"skipped {len(skipped)} unreadable or refused file(s): "
            f"{', '.join(skipped['path'][:5])}{more}; listed with the reason in {listed}")
    log(f"wrote {len(rows)} prediction(s) to {out_path}{summary(rows)}")
    if groups is not None and len(rows):
        _write_per_group(model, rows, groups, per_group, out_path, log)
    return rows


def summary(rows: pd.DataFrame) -> str:
    """' (3 referred to a person; mean set size 1.40; 1 out of distribution)', each head's
    for a multi-head model."""
    parts = []
    for column in rows.columns if len(rows) else ():
        if column.startswith("prob_") or "_prob_" in column:  # a class may be named `refer`
            continue
        for suffix, text in (("refer", lambda c: f"{int(rows[c].sum())} referred to a person"),
                             ("set_size", lambda c: f"mean set size {rows[c].mean():.2f}"),
                             ("out_of_distribution",
                              lambda c: f"{int(rows[c].sum())} out of distribution")):
            if column == suffix or column.endswith(f"_{suffix}"):
                head = column[:-len(suffix)].rstrip("_")
                parts.append(f"{head + ': ' if head else ''}{text(column)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.predict",
        description="Predict a folder (recursively) or a CSV of images with a registered "
        "MedSweep model: calibrated probabilities, the validated decision, its confidence, "
        "whether to refer the case to a person and (models logged with them) the conformal "
        "prediction set and its size.")
    p.add_argument("model_uri", help="e.g. models:/medsweep-brain@champion, or runs:/RUN/model")
    p.add_argument("source", help="a folder of images, or a CSV with a `path` column")
    p.add_argument("--out", required=True, help="the predictions CSV to write")
    add_tracking_uri(p)
    add_verbose(p)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="images per call of the model (default %(default)s)")
    p.add_argument("--per-group", metavar="COLUMN",
                   help="a CSV source's column naming each image's patient or lesion: also "
                   "write <out>_per_group.csv, one row per group, its images combined by the "
                   "model's recorded rule (mean or max)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.set_verbose(args.verbose)
    try:
        run(args.model_uri, args.source, args.out, tracking_uri=args.tracking_uri,
            batch_size=args.batch_size, per_group=args.per_group)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
