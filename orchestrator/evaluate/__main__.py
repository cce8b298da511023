"""`python -m orchestrator.evaluate MODEL_URI DATA [--task TASK] [--name SITE]
[--tracking-uri URI] [--recalibrate FRACTION]`: external validation of a registered version
(`docs/evaluation.md`). Exit 2 with one line on a refusal (classes that do not match the
model's, an unknown model, unreadable data)."""
from __future__ import annotations

import argparse
import sys

from orchestrator import console
from orchestrator.console import add_tracking_uri, add_verbose
from orchestrator.errors import MedSweepError

MIN_RESAMPLES = 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.evaluate",
        description="Evaluate a registered MedSweep model on an external site's data through "
        "its served pyfunc: figures with 95%% group-bootstrap intervals, decision figures at "
        "its operating point, calibration slope and intercept, its refer rule, sets and OOD "
        "flag on the new data, and whether performance transported from its internal test "
        "split. Logs an MLflow run and tags the model version.")
    p.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("data", help="the site's data: a folder in the task's layout, or a CSV")
    p.add_argument("--task", help="the task whose reader reads DATA (default: the model's)")
    p.add_argument("--name", help="the site's name, as the version's tag `external.<name>` "
                   "(default: DATA's folder name)")
    add_tracking_uri(p)
    p.add_argument("--recalibrate", type=float, metavar="FRACTION",
                   help="fit a new temperature on this fraction of DATA's groups and judge it "
                   "on the other groups (both figures logged)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap and the recalibration split (default 0)")
    p.add_argument("--resamples", type=int, default=MIN_RESAMPLES,
                   help="bootstrap resamples (default and minimum %(default)s)")
    p.add_argument("--subgroup", action="append", default=[], metavar="COLUMN",
                   help="measure the site per value of COLUMN (repeatable): an extra column "
                   "of its CSV, HAM10000's sex, age (banded) or localization, DICOM's "
                   "PatientSex, PatientAge (banded) or Manufacturer (docs/evaluation.md)")
    add_verbose(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.set_verbose(args.verbose)
    try:
        from orchestrator.evaluate.external_run import evaluate_external

        if args.resamples < MIN_RESAMPLES:
            raise MedSweepError(f"bootstrap resamples must be >= {MIN_RESAMPLES}, got "
                                f"{args.resamples}")
        evaluate_external(args.model_uri, args.data, task=args.task, site=args.name,
                          tracking_uri=args.tracking_uri, recalibrate=args.recalibrate,
                          seed=args.seed, resamples=args.resamples,
                          subgroups=tuple(dict.fromkeys(args.subgroup)), log=console.say)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
