"""The `Task` record: everything MedSweep knows about a medical task, as frozen facts.

A task is data, not code: the readers, the splitter, the trainer and (later) the sweep and the
ensemble all read the same record, so a metric or a class list is declared exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from orchestrator.errors import ConfigError

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "macro_f1")
LOSSES = ("cross_entropy", "class_weighted", "focal")
# Kinds of test-time transform a task may allow; the TTA module maps each kind to its variants.
TTA_KINDS = ("hflip", "vflip", "rotate", "brightness")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Preprocessing:
    """Pixel preprocessing applied once, before caching, and again identically at serving time."""

    grayscale: bool = False  # reduce to one channel first (MRI, X-ray), then replicate to RGB
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_tiles: int = 8

    def key(self) -> str:
        """A stable string that names this preprocessing in cache keys and MLflow params."""
        parts = ["gray" if self.grayscale else "rgb"]
        if self.clahe:
            parts.append(f"clahe{self.clahe_clip:g}x{self.clahe_tiles}")
        return "-".join(parts)


@dataclass(frozen=True)
class SplitPolicy:
    """How train/val/test are made when the layout does not ship them."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass(frozen=True)
class Task:
    """Facts about one medical classification task (one variant of it)."""

    name: str
    variant: str
    title: str
    layout: str  # reader name in orchestrator.data.layouts
    classes: tuple[str, ...]  # model output order
    source_labels: tuple[str, ...]  # canonical labels as the data set names them
    label_map: Mapping[str, str | None]  # source label -> class (None: left out by this variant)
    label_aliases: Mapping[str, str] = field(default_factory=dict)  # lower-case alias -> source label
    positive_class: str | None = None
    source_channels: int = 3
    resolutions: tuple[int, ...] = (224,)
    metric: str = "balanced_accuracy"
    mode: str = "max"
    group_key: str | None = None  # what a group is (lesion_id, patient_id); None: no groups
    preprocessing: Preprocessing = Preprocessing()
    split: SplitPolicy = SplitPolicy()
    tta_kinds: tuple[str, ...] = TTA_KINDS
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    synthetic_note: str = ""  # how the phantom for this task encodes its classes

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_map", MappingProxyType(dict(self.label_map)))
        object.__setattr__(self, "label_aliases", MappingProxyType(dict(self.label_aliases)))
        if self.metric not in METRICS:
            raise ConfigError(f"task {self.name}: metric {self.metric!r} is not one of {METRICS}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"task {self.name}: mode must be 'max' or 'min', got {self.mode!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"task {self.name}: loss {self.loss!r} is not one of {LOSSES}")
        bad = [k for k in self.tta_kinds if k not in TTA_KINDS]
        if bad:
            raise ConfigError(f"task {self.name}: unknown TTA kinds {bad}; valid: {TTA_KINDS}")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ConfigError(
                f"task {self.name}: positive class {self.positive_class!r} not in {self.classes}"
            )
        unmapped = [s for s in self.source_labels if s not in self.label_map]
        if unmapped:
            raise ConfigError(f"task {self.name}: source labels {unmapped} have no class mapping")
        stray = {c for c in self.label_map.values() if c is not None} - set(self.classes)
        if stray:
            raise ConfigError(f"task {self.name}: label_map names unknown classes {sorted(stray)}")

    @property
    def key(self) -> str:
        """`name/variant`, the one string that identifies this record."""
        return f"{self.name}/{self.variant}"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.classes.index(self.positive_class)

    @property
    def has_groups(self) -> bool:
        return self.group_key is not None

    def canonical_source_label(self, raw: str) -> str | None:
        """Map a folder name or CSV value to a source label; None if it is not one of ours."""
        text = raw.strip()
        for label in self.source_labels:
            if text.lower() == label.lower():
                return label
        return self.label_aliases.get(text.lower())

    def class_of(self, source_label: str) -> str | None:
        """The class a source label trains as under this variant (None: left out)."""
        return self.label_map[source_label]

    def class_index(self, cls: str) -> int:
        try:
            return self.classes.index(cls)
        except ValueError:
            raise ConfigError(
                f"task {self.key}: unknown class {cls!r}; expected one of {list(self.classes)}"
            ) from None

    def with_classes(self, classes: tuple[str, ...], positive_class: str | None = None) -> "Task":
        """A copy whose classes come from the data (the `folder` task discovers them)."""
        mapping = {c: c for c in classes}
        return replace(
            self,
            classes=tuple(classes),
            source_labels=tuple(classes),
            label_map=mapping,
            positive_class=positive_class,
        )

    def summary(self) -> dict:
        """A flat, JSON-friendly description for logs and MLflow params."""
        return {
            "task": self.name,
            "variant": self.variant,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "metric": self.metric,
            "mode": self.mode,
            "group_key": self.group_key,
            "preprocessing": self.preprocessing.key(),
            "source_channels": self.source_channels,
        }
