"""`python -m orchestrator.ensemble --sweep-run RUN_ID`: (re)build a sweep's final ensemble."""
from __future__ import annotations

import argparse
import sys

from orchestrator.ensemble.build import DEFAULT_POLICIES as POLICIES
from orchestrator.clinical.operating_point import RULES
from orchestrator.errors import MedSweepError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.ensemble",
        description="Build the final ensemble of a finished sweep: TTA policy, members and "
        "weights chosen on validation only, the test split predicted once, the model logged "
        "and registered in MLflow as medsweep-TASK@candidate.")
    p.add_argument("--sweep-run", required=True, help="the sweep's MLflow parent run id "
                   "(printed at the end of every sweep)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow/mlflow.db in the working directory)")
    p.add_argument("--tta", nargs="+", default=list(POLICIES), metavar="POLICY",
                   help=f"TTA policies to choose from, cheapest first ({', '.join(POLICIES)})")
    p.add_argument("--top-k", type=int, default=8, help="candidate trials, best by validation "
                   "metric (default %(default)s)")
    p.add_argument("--iterations", type=int, default=25, help="Caruana selection steps")
    p.add_argument("--data-dir", help="where the data live now, if they moved since the sweep")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else local)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPU share of each "
                   "inference actor on a cluster (default: CPU)")
    c = p.add_argument_group("clinical report (docs/clinical_report.md)")
    c.add_argument("--threshold-rule", default="sensitivity_bound", choices=RULES,
                   help="binary tasks, on held-out predictions: the most specific threshold "
                   "whose sensitivity has a 95%% lower bound >= --target-sensitivity "
                   "(sensitivity_bound), whose point sensitivity reaches it (sensitivity), or "
                   "Youden's J (default %(default)s)")
    c.add_argument("--target-sensitivity", type=float, default=0.90,
                   help="default %(default)s")
    c.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the "
                   "95%% intervals (>= 1000; default %(default)s)")
    c.add_argument("--mc-dropout", type=int, default=0, metavar="PASSES",
                   help="MC-dropout passes for predictive entropy (0: off, the default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from orchestrator.clinical.evaluate import ClinicalOptions
        from orchestrator.ensemble.build import build_ensemble
        from orchestrator.ensemble.report import print_report
        from orchestrator.sweep.state import connect_ray

        clinical = ClinicalOptions(threshold_rule=args.threshold_rule,
                                   target_sensitivity=args.target_sensitivity,
                                   resamples=args.resamples, mc_dropout_passes=args.mc_dropout)
        connect_ray(args.address, print)
        report = build_ensemble(args.sweep_run, tracking_uri=args.tracking_uri,
                                policies=args.tta, top_k=args.top_k,
                                max_iterations=args.iterations, data_dir=args.data_dir,
                                gpus_per_actor=args.gpus_per_actor, clinical=clinical)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
