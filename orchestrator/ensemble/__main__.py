"""`python -m orchestrator.ensemble --sweep-run RUN_ID`: (re)build a sweep's final ensemble.
`python -m orchestrator.ensemble promote TASK`: move `champion` to a better `candidate`."""
from __future__ import annotations

import argparse
import sys

from orchestrator.ensemble.build import DEFAULT_POLICIES as POLICIES
from orchestrator.clinical.options import add_clinical_arguments, clinical_options
from orchestrator import console
from orchestrator.cluster import connect_ray, disconnect_ray
from orchestrator.console import add_tracking_uri, add_verbose
from orchestrator.errors import MedSweepError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.ensemble",
        epilog="`python -m orchestrator.ensemble promote TASK --help`: guarded promotion of "
        "the registered candidate to champion.",
        description="Build the final ensemble of a finished sweep: TTA policy, members and "
        "weights chosen on validation only, the test split predicted once, the model logged "
        "and registered in MLflow as medsweep-TASK@candidate.")
    p.add_argument("--sweep-run", required=True, help="the sweep's MLflow parent run id "
                   "(printed at the end of every sweep)")
    add_tracking_uri(p)
    add_verbose(p)
    p.add_argument("--tta", nargs="+", default=list(POLICIES), metavar="POLICY",
                   help=f"TTA policies to choose from, cheapest first ({', '.join(POLICIES)})")
    p.add_argument("--top-k", type=int, default=8, help="candidate trials, best by validation "
                   "metric (default %(default)s)")
    p.add_argument("--iterations", type=int, default=25, help="Caruana selection steps")
    p.add_argument("--data-dir", help="where the data live now, if they moved since the sweep")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else local)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPU share of each "
                   "inference actor on a cluster (default: CPU)")
    add_clinical_arguments(p)
    return p


def _promote_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.ensemble promote",
        description="Move medsweep-TASK@champion to medsweep-TASK@candidate only when both were "
        "tested on the same images and the 95%% paired bootstrap interval of (candidate - "
        "champion) on the task metric lies above 0; otherwise print the interval and refuse "
        "(exit 1).")
    p.add_argument("task", help="the task whose registered model to promote (brain, skin, ...)")
    add_tracking_uri(p)
    add_verbose(p)
    p.add_argument("--force", action="store_true", help="promote even when refused; the model "
                   "version records it in the tag medsweep.promotion")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples "
                   "(>= 1000; default %(default)s)")
    return p


def _promote(argv: list[str]) -> int:
    args = _promote_parser().parse_args(argv)
    console.set_verbose(args.verbose)
    try:
        console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
        from orchestrator.ensemble.promote import promote

        if args.resamples < 1000:
            raise MedSweepError(f"bootstrap resamples must be >= 1000, got {args.resamples}")
        moved = promote(args.task, tracking_uri=args.tracking_uri, force=args.force,
                        resamples=args.resamples)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if moved else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "promote":
        return _promote(argv[1:])
    args = _parser().parse_args(argv)
    console.set_verbose(args.verbose)
    try:
        console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
        from orchestrator.ensemble.build import build_ensemble
        from orchestrator.ensemble.report import print_report
        from orchestrator.ensemble.sources import sweep_info
        from orchestrator.tracking import default_tracking_uri

        clinical = clinical_options(args)
        # an unknown or wrong run fails before Ray starts
        sweep_info(args.tracking_uri or default_tracking_uri(), args.sweep_run)
        connect_ray(args.address, print)
        report = build_ensemble(args.sweep_run, tracking_uri=args.tracking_uri,
                                policies=args.tta, top_k=args.top_k,
                                max_iterations=args.iterations, data_dir=args.data_dir,
                                gpus_per_actor=args.gpus_per_actor, clinical=clinical,
                                log=console.once(console.say))
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        disconnect_ray()
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
