"""One training trial, end to end, without Ray: `train_trial(config)`.

The sweep calls the same function inside each Tune trial and plugs its reporter into the
per-epoch callback. Everything a later stage needs lands in `output_dir`: the best model, its
validation probabilities (ensembling never retrains), the history and a resumable checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from orchestrator.config import TrialConfig
from orchestrator.errors import MedSweepError
from tasks import get_task
from tasks.base import Task

CHECKPOINT_DIR = "checkpoint"
BEST_MODEL = "best.keras"
VAL_PROBS = "val_probs.npy"
VAL_LABELS = "val_labels.npy"
RESULT = "result.json"

Reporter = Callable[["EpochReport"], None]


class InjectedFault(RuntimeError):
    """Raised once by `fail_at_epoch`, so tests can prove a crashed trial resumes."""


@dataclass(frozen=True)
class TrialData:
    """What a trial trains and validates on; the test split is deliberately not here."""

    task: Task
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_paths: tuple[str, ...]
    fingerprint: str
    synthetic: bool
    manifest_path: str


@dataclass(frozen=True)
class EpochReport:
    """One epoch's figures; `checkpoint_dir` holds the state to resume after this epoch."""

    epoch: int  # 1-based, epochs completed
    metrics: dict[str, float]
    is_best: bool
    checkpoint_dir: Path


@dataclass
class TrialResult:
    config: dict[str, Any]
    metric: str
    mode: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    output_dir: Path
    synthetic: bool
    history: list[dict[str, float]] = field(default_factory=list)


def load_trial_data(config: TrialConfig, log: Callable[[str], None] = print) -> TrialData:
    """Prepare (or load from cache) the task's data at the trial's resolution."""
    from orchestrator.data.dataset import prepare_dataset

    prepared = prepare_dataset(get_task(config.task), config.data_dir, config.resolution,
                               split_seed=config.split_seed,
                               drop_duplicates=config.drop_duplicates,
                               phantom_per_class=config.phantom_per_class, log=log)
    x_train, y_train = prepared.arrays("train")
    x_val, y_val = prepared.arrays("val")
    return TrialData(task=prepared.task, x_train=x_train, y_train=y_train, x_val=x_val,
                     y_val=y_val, val_paths=tuple(prepared.paths("val")),
                     fingerprint=prepared.fingerprint, synthetic=prepared.synthetic,
                     manifest_path=str(prepared.manifest_path))


def check_names(cfg: TrialConfig) -> None:
    """Fail on an unknown task, backbone or schedule before any data is read."""
    get_task(cfg.task)
    from orchestrator.models import get_backbone
    from orchestrator.schedules import get_schedule

    get_backbone(cfg.backbone)
    get_schedule(cfg.schedule)


def train_trial(
    config: TrialConfig | Mapping[str, Any],
    data: TrialData | None = None,
    *,
    output_dir: str | Path,
    report: Reporter | None = None,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> TrialResult:
    """Train one config; resume from a checkpoint directory written by an earlier attempt."""
    from orchestrator.trainer import Trainer  # TensorFlow is imported only when a trial runs

    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    check_names(cfg)
    data = data if data is not None else load_trial_data(cfg, log)
    trainer = Trainer(cfg, data, Path(output_dir), report=report, log=log)
    return trainer.run(Path(resume_from) if resume_from else None)


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from tasks import task_names

    p = argparse.ArgumentParser(
        prog="python -m orchestrator.train",
        description="Train one MedSweep trial (no Ray). Without --data-dir it trains on the "
        "task's deterministic SYNTHETIC phantom, never on medical data.")
    d = TrialConfig()
    p.add_argument("task", help=f"one of {', '.join(task_names())}; `name/variant` selects a "
                   "variant (brain/4class, leukemia/binary)")
    p.add_argument("--data-dir", help="the data set in its real layout (docs/data.md); "
                   "omitted: the synthetic phantom")
    p.add_argument("--backbone", default=d.backbone, help="baseline_cnn, resnet50, densenet121, "
                   "efficientnetb0, mobilenetv3small (default %(default)s)")
    p.add_argument("--weights", default=d.weights, help="auto | imagenet | none")
    p.add_argument("--weights-dir", help="folder holding the standard Keras weight files "
                   "(air-gapped clusters); else MEDSWEEP_WEIGHTS_DIR, else the Keras cache")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--schedule", default=d.schedule, help="two_phase, three_phase, "
                   "three_phase_continued, full (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr-multiplier", type=float, default=d.lr_multiplier,
                   help="scales every phase's learning rate")
    p.add_argument("--loss", help="cross_entropy | class_weighted | focal (default: the task's)")
    p.add_argument("--focal-gamma", type=float, help="focal loss gamma (default: the task's)")
    p.add_argument("--label-smoothing", type=float, help="(default: the task's)")
    p.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha)
    p.add_argument("--augment", default=d.augment, help="none | light | medium | heavy")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--drop-duplicates", action="store_true",
                   help="drop images duplicated across splits from the later split")
    p.add_argument("--phantom-per-class", type=int, default=d.phantom_per_class)
    p.add_argument("--mixed-precision", default=d.mixed_precision, help="auto | on | off")
    p.add_argument("--cpu-threads", type=int, default=d.cpu_threads)
    p.add_argument("--output-dir", default="runs/trial", help="where the model, validation "
                   "probabilities, history and checkpoint go (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/checkpoint if an earlier run left one")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    output_dir = Path(args.pop("output_dir"))
    resume = args.pop("resume")
    try:
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
