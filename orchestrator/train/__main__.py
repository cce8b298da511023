"""`python -m orchestrator.train TASK`: one training trial without Ray (see `trial.py`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator import console
from orchestrator.train.augmentations import AUGMENTATIONS
from orchestrator.models.backbones import BACKBONES
from orchestrator.data.dicom import add_dicom_arguments
from orchestrator.data.phantom_dicom import FORMATS as PHANTOM_FORMATS
from orchestrator.train.config import PRECISIONS, WEIGHTS, TrialConfig
from orchestrator.errors import MedSweepError
from orchestrator.train.schedules import SCHEDULES
from orchestrator.train.artifacts import CHECKPOINT_DIR
from orchestrator.train.trial import train_trial
from tasks import task_names
from tasks.base import LOSSES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.train",
        description="Train one MedSweep trial (no Ray). Without --data-dir it trains on the "
        "task's deterministic SYNTHETIC phantom, never on medical data.")
    d = TrialConfig()
    p.add_argument("task", help=f"one of {', '.join(task_names())}; `name/variant` selects a "
                   "variant (brain/4class, leukemia/binary)")
    p.add_argument("--data-dir", help="the data set in its real layout (docs/data.md); "
                   "omitted: the synthetic phantom")
    p.add_argument("--backbone", default=d.backbone,
                   help=f"{', '.join(BACKBONES)} (default %(default)s)")
    p.add_argument("--weights", default=d.weights, help=" | ".join(WEIGHTS))
    p.add_argument("--weights-dir", help="folder holding the standard Keras weight files "
                   "(air-gapped clusters); else MEDSWEEP_WEIGHTS_DIR, else the Keras cache")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--schedule", default=d.schedule,
                   help=f"{', '.join(SCHEDULES)} (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr-multiplier", type=float, default=d.lr_multiplier,
                   help="scales every phase's learning rate")
    p.add_argument("--loss", help=f"{' | '.join(LOSSES)} (default: the task's)")
    p.add_argument("--focal-gamma", type=float, help="focal loss gamma (default: the task's)")
    p.add_argument("--label-smoothing", type=float, help="(default: the task's)")
    p.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha)
    p.add_argument("--augment", default=d.augment, help=" | ".join(AUGMENTATIONS))
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--frequency-stream", action="store_true", help="add a second stream on "
                   "the image's 2-D FFT magnitude, fused with the backbone's features")
    p.add_argument("--head-weights", default=d.head_weights, help="multi-head tasks: loss "
                   "weights as HEAD=W,... (e.g. size=0.5); unnamed heads keep the task's")
    p.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--keep-duplicates", action="store_true",
                   help="do not group copies of an image before splitting (by default exact "
                   "and near copies share a group, and copies of a given test image leave "
                   "training)")
    p.add_argument("--duplicate-threshold", type=float, default=d.duplicate_threshold,
                   metavar="S", help="similarity (0.9-1) from which two images count as copies "
                   "(default %(default)s); raise it when alike, distinct images are grouped")
    p.add_argument("--positive-class", help="your own folders or CSV: the class that binary "
                   "metrics, the threshold and the report call positive (default: the "
                   "alphabetically second)")
    p.add_argument("--phantom-per-class", type=int, default=d.phantom_per_class)
    p.add_argument("--phantom-format", default=d.phantom_format, choices=PHANTOM_FORMATS,
                   help="without --data-dir: the synthetic phantom as JPEG files, or as DICOM "
                   "files the way a hospital export holds them (default %(default)s)")
    add_dicom_arguments(p)
    p.add_argument("--mixed-precision", default=d.mixed_precision, help=" | ".join(PRECISIONS))
    p.add_argument("--cpu-threads", type=int, default=d.cpu_threads)
    p.add_argument("--output-dir", default="runs/trial", help="where the model, validation "
                   "probabilities, history and checkpoint go (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/checkpoint if an earlier run left one")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's C++ start-up "
                   "lines and Python warnings (off by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    output_dir = Path(args.pop("output_dir"))
    resume = args.pop("resume")
    console.set_verbose(args.pop("verbose"))
    try:
        console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
        cfg = TrialConfig.from_dict({k: v for k, v in args.items()})
        checkpoint = output_dir / CHECKPOINT_DIR
        result = train_trial(cfg, output_dir=output_dir,
                             resume_from=checkpoint if resume and checkpoint.exists() else None)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"best val {result.metric} {result.best_metric:.4f} at epoch {result.best_epoch} "
          f"of {result.epochs_run}; model and validation probabilities in {result.output_dir}"
          + ("  [SYNTHETIC PHANTOM DATA]" if result.synthetic else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
