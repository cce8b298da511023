"""`python -m orchestrator.sweep TASK`: a Ray Tune sweep over backbones, resolutions and
unfreezing schedules, stopped early by ASHA, tracked in MLflow, resumable.

A thin argparse layer over `runner.run_sweep`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pandas as pd

from orchestrator import console
from orchestrator.clinical.options import add_clinical_arguments, clinical_options
from orchestrator.console import rule
from orchestrator.data.dicom import (DEFAULT_WINDOW, NO_FRAME, add_dicom_arguments, check_frame,
                                     parse_window)
from orchestrator.data.phantom_dicom import DEFAULT_FORMAT, FORMATS as PHANTOM_FORMATS
from orchestrator.errors import ConfigError, MedSweepError, SweepInterrupted
from orchestrator.sweep.records import LEADERBOARD_COLUMNS
from orchestrator.sweep.runner import SCHEDULERS, run_sweep
from orchestrator.sweep.stages import SweepResult
from orchestrator.sweep.search import MIN_TPE_TRIALS, SEARCHES
from orchestrator.cluster import disconnect_ray
from tasks import task_names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Sweep backbones, resolutions and unfreezing schedules for a medical image "
        "task with Ray Tune (ASHA early stopping) and record every trial in MLflow. Without "
        "--data-dir it runs on the task's SYNTHETIC phantom, never on medical data.")
    p.add_argument("task", help=f"one of {', '.join(task_names())} (or name/variant, e.g. "
                   "brain/4class)")
    p.add_argument("--data-dir", help="the data set in its real layout (docs/data.md); "
                   "omitted: the synthetic phantom")
    p.add_argument("--profile", help="smoke | cpu | gpu (default: gpu when the cluster has "
                   "GPUs, else cpu)")
    p.add_argument("--num-samples", type=int, help="trials to sample (default: the profile's)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial, ASHA's max_t "
                   "(default: the profile's)")
    p.add_argument("--cpus-per-trial", type=float, help="CPU slots per trial; TensorFlow in "
                   "the trial uses that many threads (default: the profile's)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; a fraction (0.5) "
                   "packs trials on one GPU and caps each trial's TensorFlow memory to match")
    p.add_argument("--workers-per-trial", type=int, help="data-parallel workers per trial "
                   "(default 1): each takes its share of the trial's GPUs (or CPU slots, at "
                   "least one each) and of every batch; batch_size stays the global batch "
                   "(docs/cluster.md, Several devices per trial)")
    p.add_argument("--cv-folds", type=int, help="after the search, retrain the finalists on "
                   "this many grouped, stratified folds of every non-test image and choose the "
                   "ensemble on their out-of-fold predictions; 0: choose on the holdout "
                   "validation split (default: the profile's: smoke 2, cpu 3, gpu 5)")
    p.add_argument("--cv-top", type=int, help="finalists to cross-validate (default: the "
                   "profile's: smoke 2, cpu 2, gpu 4)")
    p.add_argument("--replicates", type=int, help="seeds of each finalist retrained on the "
                   "folds, each one more ensemble candidate (the recipes' 3-seed ensembles: "
                   "--replicates 3; default 1); needs cross-validation")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else a local "
                   "single-node Ray)")
    p.add_argument("--storage-path", help="where trial checkpoints go: a local folder "
                   "(default runs/sweeps) or a URI every node reaches (s3://bucket/path)")
    p.add_argument("--experiment", help="MLflow experiment and sweep folder name "
                   "(default medsweep-TASK)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow/mlflow.db in the working directory)")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted "
                   "sweep of this experiment: finished trials stay, unfinished ones resume "
                   "from their last checkpoint, no MLflow run is duplicated")
    p.add_argument("--seed", type=int, default=0, help="search seed: the same seed samples "
                   "the same configs (default %(default)s)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the final TTA ensemble "
                   "(build it later with python -m orchestrator.ensemble --sweep-run ID)")
    p.add_argument("--search", choices=SEARCHES, default=None, help="how trials' "
                   f"configurations are drawn: random, or tpe (Optuna's TPE, learning from the "
                   f"trials so far). Default: tpe from {MIN_TPE_TRIALS} trials (the gpu profile), "
                   "random below (docs/search_spaces.md)")
    p.add_argument("--scheduler", default="asha", choices=SCHEDULERS, help="asha stops "
                   "trailing trials early; fifo runs all to the end (default %(default)s)")
    p.add_argument("--weights-dir", help="folder holding the ImageNet weight files (python -m "
                   "orchestrator.models.weights fetch DIR), at the same path on every node (else "
                   "MEDSWEEP_WEIGHTS_DIR on this machine, else each node's Keras cache)")
    p.add_argument("--keep-duplicates", action="store_true", help="do not group copies of an "
                   "image before splitting (by default exact and near copies share a group, and "
                   "copies of a given test image leave training; the pairs are logged either way)")
    p.add_argument("--duplicate-threshold", type=float, default=None, metavar="S",
                   help="similarity (0.9-1) from which two images count as copies (default "
                   "0.995, measured in docs/benchmarks.md); raise it when alike, distinct "
                   "images are grouped")
    p.add_argument("--positive-class", help="your own folders or CSV: the class that binary "
                   "metrics, the threshold and the report call positive")
    add_dicom_arguments(p)
    p.add_argument("--phantom-format", default=DEFAULT_FORMAT, choices=PHANTOM_FORMATS,
                   help="without --data-dir: the synthetic phantom as JPEG files, or as DICOM "
                   "files the way a hospital export holds them (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="replace one key of the profile's search space (repeatable): "
                   "--set backbone=resnet50 fixes it, --set 'resolution=[128,224]' makes it a "
                   "choice; VALUE is read as JSON, else as a string. Checked before Ray starts")
    p.add_argument("--verbose", action="store_true", help="also show each trial's own "
                   "detailed epoch lines, Tune's status lines and tables, TensorFlow's C++ "
                   "start-up lines, Python warnings and Ray's checkpoint lines and notices, in "
                   "the driver and every worker (off by default: one line per trial and epoch)")
    add_clinical_arguments(p)  # what the final ensemble's evaluation fits (refer rule, ...)
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> {key: value}; VALUE as JSON (numbers, lists, true/null), else str."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backbone=resnet50")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.set_verbose(args.verbose)  # this process and, via Ray, every worker
    started = time.perf_counter()
    try:
        overrides = parse_overrides(args.overrides)
        clinical = clinical_options(args)  # checked before Ray starts
        if args.keep_duplicates:
            overrides["keep_duplicates"] = True
        if args.duplicate_threshold is not None:
            overrides["duplicate_threshold"] = args.duplicate_threshold
        if args.positive_class:
            overrides["positive_class"] = args.positive_class
        if args.dicom_window != DEFAULT_WINDOW:
            overrides["dicom_window"] = parse_window(args.dicom_window)
        if args.dicom_frame != NO_FRAME:
            overrides["dicom_frame"] = check_frame(args.dicom_frame)
        if args.phantom_format != DEFAULT_FORMAT:
            overrides["phantom_format"] = args.phantom_format
        result = run_sweep(args.task, space_overrides=overrides, data_dir=args.data_dir, profile=args.profile,
                           num_samples=args.num_samples, max_epochs=args.max_epochs,
                           cpus_per_trial=args.cpus_per_trial,
                           gpus_per_trial=args.gpus_per_trial,
                           workers_per_trial=args.workers_per_trial, cv_folds=args.cv_folds,
                           cv_top=args.cv_top, replicates=args.replicates,
                           address=args.address,
                           storage_path=args.storage_path, experiment=args.experiment,
                           tracking_uri=args.tracking_uri, resume=args.resume, seed=args.seed,
                           scheduler=args.scheduler, ensemble=not args.no_ensemble,
                           weights_dir=args.weights_dir, clinical=clinical,
                           search=args.search)
    except SweepInterrupted as err:  # Ctrl+C or SIGTERM while trials ran: Tune saved them
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the trials started, or after they all finished
        print("interrupted (Ctrl+C or SIGTERM) outside the trials; any sweep state already "
              "written stays as it was", file=sys.stderr)
        return 130
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        disconnect_ray()
    _print_summary(result, time.perf_counter() - started)
    return 0


def _print_summary(result: SweepResult, seconds: float) -> None:
    """The leaderboard (trials by the short names their epoch lines used), where everything
    is, then the ensemble's figures: the sweep's last lines, under a titled rule each. The data
    line was printed when the data were prepared."""
    board = result.leaderboard
    print(rule(f"sweep finished in {seconds / 60:.1f} min: {len(board)} trials, best first "
               f"(val {result.metric}, {result.mode})"))
    if not board.empty:
        shown = board.rename(columns={"trial_id": "trial"})
        # what every trial shares was said when the search started: only what differs
        same = [c for c in LEADERBOARD_COLUMNS if c in shown and len(shown) > 1
                and shown[c].astype(str).nunique() == 1]
        shown = shown.drop(columns=same).round(3)  # full precision stays in MLflow
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(shown.head(10).to_string(index=False))
    print(f"MLflow parent run: {result.parent_run_id}  (tracking URI {result.tracking_uri})")
    print(f"open the MLflow UI: {result.ui_command}")
    if result.runs_url:
        print(f"  then the runs table: {result.runs_url}  (this sweep's trials, best "
              f"val_{result.metric} first)")
    print(f"checkpoints: {result.experiment_path}")
    if result.ensemble is not None:
        from orchestrator.ensemble.report import print_report

        print_report(result.ensemble)


if __name__ == "__main__":
    sys.exit(main())
