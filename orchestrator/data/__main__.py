"""`python -m orchestrator.data`: write a task's synthetic phantom, or scan a data folder.

    python -m orchestrator.data synth TASK OUT_DIR [--per-class N] [--seed S] [--size PX]
                                                   [--variant V] [--format jpeg|dicom]
    python -m orchestrator.data scan TASK DATA_DIR [--variant V]

`scan` is the first thing to run on a fresh download: it says what the reader found per class
and split, what it skipped and why, before any training spends time on it.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from orchestrator.data.layouts import read_layout
from orchestrator.data.phantom_dicom import DEFAULT_FORMAT, FORMATS
from orchestrator.data.phantoms import phantom_banner, write_phantom
from orchestrator.data.readers.walk import file_skip_reason
from orchestrator.data.table import PHANTOM_MARKER, Scan, summarize_skipped, target_column
from orchestrator.errors import ConfigError, MedSweepError
from tasks import get_task, task_names
from tasks.base import Task


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one `error: ...` line on stderr and return 2."""
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except (MedSweepError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.data",
                                description="Synthetic phantoms and data-folder scans.")
    sub = p.add_subparsers(required=True, metavar="{synth,scan}")
    task_help = f"one of {', '.join(task_names())}, or name/variant (e.g. brain/4class)"

    synth = sub.add_parser("synth", help="write a task's SYNTHETIC phantom in its real layout")
    synth.add_argument("task", help=task_help)
    synth.add_argument("out_dir", help="an empty or new folder")
    synth.add_argument("--per-class", type=int, default=40, help="images per source class")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, help="short side in pixels (default 128; skin 120)")
    synth.add_argument("--variant", help="task variant (default: the task's default)")
    synth.add_argument("--format", default=DEFAULT_FORMAT, choices=FORMATS, dest="fmt",
                       help="JPEG files, or DICOM files as a hospital export holds them "
                       "(12-bit values, a window, some MONOCHROME1, RLE or without extension, "
                       "fake patient identifiers, one report) (default %(default)s)")
    synth.set_defaults(command=_synth)

    scan = sub.add_parser("scan", help="count what a data folder holds, per class and split")
    scan.add_argument("task", help=task_help)
    scan.add_argument("data_dir", help="the data set in its real layout (see docs/data.md)")
    scan.add_argument("--variant", help="task variant (default: the task's default)")
    scan.set_defaults(command=_scan)
    return p


def _task(args: argparse.Namespace) -> Task:
    name, _, variant = args.task.partition("/")
    if variant and args.variant and variant != args.variant:
        raise ConfigError(f"task {args.task!r} and --variant {args.variant!r} disagree")
    return get_task(name, args.variant or variant or None)


def _synth(args: argparse.Namespace) -> int:
    task = _task(args)
    root = write_phantom(task, args.out_dir, per_class=args.per_class, seed=args.seed,
                         size=args.size, fmt=args.fmt)
    print(phantom_banner(task, root), file=sys.stderr)
    files = [p for p in root.rglob("*") if p.is_file() and p.name != PHANTOM_MARKER
             and file_skip_reason(p) is None]
    if args.fmt == "dicom":
        reports = sum(1 for p in files if p.name.endswith("_report"))
        print(f"wrote {len(files)} synthetic DICOM files for task {task.name} to {root}"
              + (f" ({reports} of them a structured report without pixels)" if reports else ""))
    else:
        print(f"wrote {len(files)} synthetic images for task {task.name} to {root}")
    print(f"scan it with: python -m orchestrator.data scan {task.key} {root}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    scan = read_layout(_task(args), args.data_dir)
    print(f"task {scan.task.key} ({scan.task.layout} layout): {len(scan.table)} images under "
          f"{scan.root}")
    if scan.synthetic:
        print("SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES")
    print(counts_table(scan).to_string())
    for line in head_lines(scan):
        print(line)
    for line in scan.notes:
        print(f"note: {line}")
    for line in summarize_skipped(scan.skipped):
        print(line)
    return 0


def counts_table(scan: Scan) -> pd.DataFrame:
    """Images per class (rows, in model order) and split (columns; `unsplit`: splitter decides)."""
    split = scan.table["split"].replace("", "unsplit")
    table = pd.crosstab(scan.table["label"], split, margins=True, margins_name="total")
    table = table.reindex([*scan.task.classes, "total"]).fillna(0).astype(int)
    return table.rename_axis(index=None, columns=None)


def head_lines(scan: Scan) -> list[str]:
    """A multi-head task's heads beyond the first classification one (whose classes are the
    table's rows): images per class, or a regression head's range and mean."""
    first = next((h for h in scan.task.heads if h.is_classification), None)
    lines = []
    for head in scan.task.heads:
        values = scan.table[target_column(head.name)]
        if head is first:
            continue
        if head.is_classification:
            counts = values.value_counts()
            lines.append(f"head {head.name}: " + ", ".join(
                f"{c} {int(counts.get(c, 0))}" for c in head.classes))
        else:
            numbers = values.astype(float)
            unit = f" {head.unit}" if head.unit else ""
            lines.append(f"head {head.name} (regression): {numbers.min():g} to "
                         f"{numbers.max():g}{unit}, mean {numbers.mean():.4g}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
