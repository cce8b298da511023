"""The trial config: one flat, JSON-friendly record that Tune samples, MLflow logs and
`train_trial` runs. Validated once, here, with errors that name the field and the value.

Every name (task, backbone, schedule, augmentation, loss) is checked against its registry when a
config is built. The registries import no TensorFlow, so a bad name fails on the driver, before
Ray starts, with the list of valid names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from orchestrator.data import dicom
from orchestrator.data.phantom_dicom import FORMATS as PHANTOM_FORMATS
from orchestrator.train.augmentations import get_augmentation
from orchestrator.models.backbones import get_backbone
from orchestrator.errors import ConfigError
from orchestrator.models.heads import parse_head_weights
from orchestrator.train.schedules import get_schedule
from tasks import get_task
from tasks.base import LOSSES

WEIGHTS = ("auto", "imagenet", "none")
PRECISIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training trial needs; defaults are a small, sane CPU run."""

    task: str = "brain"  # `name` or `name/variant`
    data_dir: str | None = None  # None: the task's synthetic phantom (announced as such)
    backbone: str = "baseline_cnn"
    weights: str = "auto"  # auto: imagenet for pretrained backbones, none for the baseline CNN
    weights_dir: str | None = None
    resolution: int = 128
    schedule: str = "three_phase"
    epochs: int = 10
    batch_size: int = 32
    lr_multiplier: float = 1.0  # scales every phase's learning rate; the schedule keeps its shape
    loss: str | None = None  # None: the task's default
    focal_gamma: float | None = None  # None: the task's
    label_smoothing: float | None = None  # None: the task's
    mixup_alpha: float = 0.0  # 0 disables MixUp
    augment: str = "light"
    dropout: float = 0.5
    frequency_stream: bool = False  # a second stream on the image's 2-D FFT magnitude
    head_weights: str = ""  # multi-head tasks: "HEAD=W,..." loss weights ("" -> the task's)
    train_batchnorm: bool = False
    early_stopping_patience: int = 0  # 0 disables; the sweep stops trials with ASHA instead
    seed: int = 0  # weights init, shuffling, augmentation
    split_seed: int = 0  # fixed across a sweep so every trial validates on the same images
    keep_duplicates: bool = False  # True: copies of an image are not grouped before splitting
    duplicate_threshold: float = 0.995  # similarity from which two images are copies
    positive_class: str | None = None  # your own folders/CSV: the class binary metrics call positive
    cv_folds: int = 0  # folds made over the non-test images (0: none; the holdout split only)
    cv_fold: int = -1  # >= 0: train on the other folds, predict this one, keep the last epoch
    phantom_per_class: int = 40
    phantom_format: str = "jpeg"  # jpeg | dicom: the synthetic phantom's files (no --data-dir)
    dicom_window: str = "file"  # how DICOM values become pixels: file | auto | CENTER,WIDTH
    dicom_frame: int = -1  # the frame of multi-frame DICOM files (-1: they are left out)
    mixed_precision: str = "auto"
    cpu_threads: int = 0  # 0: TensorFlow's default
    gpu_memory_fraction: float = 0.0  # 0 < f < 1: cap TensorFlow at f of the GPU (Ray won't)
    fail_at_epoch: int = 0  # fault injection for tests: raise once after this epoch (0: never)

    def __post_init__(self) -> None:
        task = _check_name("task", self.task, get_task)
        backbone = _check_name("backbone", self.backbone, get_backbone)
        _check_name("schedule", self.schedule, get_schedule)
        _check_name("augment", self.augment, get_augmentation)
        _check_choice("weights", self.weights, WEIGHTS)
        _check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        if self.loss is not None:
            _check_choice("loss", self.loss, LOSSES)
        _check_range("resolution", self.resolution, backbone.min_resolution, 1024)
        _check_range("epochs", self.epochs, 1, 10_000)
        _check_range("batch_size", self.batch_size, 1, 4096)
        _check_range("lr_multiplier", self.lr_multiplier, 1e-4, 1e3)
        if self.label_smoothing is not None:
            _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        _check_range("dropout", self.dropout, 0.0, 0.95)
        if self.focal_gamma is not None:
            _check_range("focal_gamma", self.focal_gamma, 0.0, 10.0)
        _check_range("phantom_per_class", self.phantom_per_class, 4, 100_000)
        _check_choice("phantom_format", self.phantom_format, PHANTOM_FORMATS)
        try:
            object.__setattr__(self, "dicom_window", dicom.parse_window(self.dicom_window))
            dicom.check_frame(self.dicom_frame)
        except ConfigError as err:
            raise ConfigError(f"trial config field {err}") from None
        _check_range("duplicate_threshold", self.duplicate_threshold, 0.9, 1.0)
        _check_range("cpu_threads", self.cpu_threads, 0, 1024)
        _check_range("gpu_memory_fraction", self.gpu_memory_fraction, 0.0, 1.0)
        _check_range("early_stopping_patience", self.early_stopping_patience, 0, 10_000)
        if self.head_weights:
            try:
                parse_head_weights(self.head_weights, task)
            except ConfigError as err:
                raise ConfigError(f"trial config field {err}") from None
        if self.cv_folds == 1 or not 0 <= self.cv_folds <= 20:
            raise ConfigError(f"trial config field cv_folds: {self.cv_folds!r} must be 0 (no "
                              "cross-validation) or 2..20")
        if not -1 <= self.cv_fold < max(self.cv_folds, 0):
            raise ConfigError(f"trial config field cv_fold: {self.cv_fold!r} must be -1 (the "
                              f"holdout split) or a fold in 0..{self.cv_folds - 1}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrialConfig":
        """Build from a flat dict (a Tune sample, a JSON file); unknown keys are refused by name."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown trial config field(s) {unknown}; valid fields: {', '.join(known)}"
            )
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Tune and JSON hand us numpy scalars and ints for floats; make them the declared type."""
    kind = str(field.type)
    if value is None:
        return None
    try:
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"trial config field {field.name}: {value!r} is not a {kind}") from None
    return value


def _check_name(field: str, value: Any, lookup: Callable[[str], Any]) -> Any:
    """The registry's record for `value`; its error (which lists the valid names) names the field."""
    if not isinstance(value, str):
        raise ConfigError(f"trial config field {field}: {value!r} is not a name")
    try:
        return lookup(value)
    except ConfigError as err:
        raise ConfigError(f"trial config field {field}: {err}") from None


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"trial config field {name}: {value!r} is not one of {', '.join(choices)}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(f"trial config field {name}: {value!r} is outside [{low}, {high}]")
