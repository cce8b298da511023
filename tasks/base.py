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
# The one sweep metric of a task with several heads (`orchestrator.metrics.mean_skill`).
MULTIHEAD_METRIC = "mean_skill"
HEAD_KINDS = ("classification", "regression")
HEAD_LOSSES = {"classification": ("cross_entropy",), "regression": ("huber", "mse")}
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
    # How a DICOM file's values become pixels (orchestrator.data.dicom): its own first window
    # ("file"), the values' own range ("auto") or "CENTER,WIDTH"; the frame of a multi-frame
    # file (-1: a multi-frame file is refused). No effect on other formats.
    dicom_window: str = "file"
    dicom_frame: int = -1

    def key(self) -> str:
        """A stable string that names this preprocessing in cache keys and MLflow params."""
        parts = ["gray" if self.grayscale else "rgb"]
        if self.clahe:
            parts.append(f"clahe{self.clahe_clip:g}x{self.clahe_tiles}")
        if self.dicom_window != "file":
            parts.append(f"dcmwin{self.dicom_window}")
        if self.dicom_frame >= 0:
            parts.append(f"dcmframe{self.dicom_frame}")
        return "-".join(parts)


@dataclass(frozen=True)
class SplitPolicy:
    """How train/val/test are made when the layout does not ship them."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass(frozen=True)
class Head:
    """One output of a multi-head task: a classification over `classes`, or a continuous
    target in `unit`. Its loss is weighted by `loss_weight` in the model's total loss."""

    name: str
    kind: str
    classes: tuple[str, ...] = ()
    unit: str = ""
    loss: str = ""  # "" -> the kind's first loss (cross_entropy, huber)
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"head name {self.name!r} must be a plain identifier "
                              "(letters, digits, underscores): it names a model output")
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"head {self.name}: kind {self.kind!r} is not one of {HEAD_KINDS}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "loss", self.loss or HEAD_LOSSES[self.kind][0])
        if self.loss not in HEAD_LOSSES[self.kind]:
            raise ConfigError(f"head {self.name}: loss {self.loss!r} is not one of "
                              f"{HEAD_LOSSES[self.kind]} for a {self.kind} head")
        if self.is_classification and len(self.classes) < 2:
            raise ConfigError(f"head {self.name}: a classification head needs >= 2 classes, "
                              f"got {list(self.classes)}")
        if not self.is_classification and self.classes:
            raise ConfigError(f"head {self.name}: a regression head has no classes")
        if not self.loss_weight > 0:
            raise ConfigError(f"head {self.name}: loss_weight must be > 0, got {self.loss_weight}")

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def width(self) -> int:
        """Columns this head takes in a flat prediction matrix: C probabilities, or 1 value."""
        return len(self.classes) if self.is_classification else 1


# The one classification head of a single-label task (`Task.output_heads`): its answer is the
# task's own, so its figures and served columns carry no head name.
SINGLE_HEAD = "label"
DEFAULT_POSITIVE = 1  # a two-class task that names no positive class: its second class


def positive_column(positive_index: int | None) -> int:
    """The one place the default positive class is resolved: the named one, else the second."""
    return DEFAULT_POSITIVE if positive_index is None else positive_index


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
    # Several outputs from one image (the multihead task): `classes` are then the first
    # classification head's, which stratifies the splits; `metric` is MULTIHEAD_METRIC.
    heads: tuple[Head, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_map", MappingProxyType(dict(self.label_map)))
        object.__setattr__(self, "label_aliases", MappingProxyType(dict(self.label_aliases)))
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.heads:
            self._check_heads()
        elif self.metric == MULTIHEAD_METRIC:  # heads from the data (`with_heads`), none yet
            if self.classes:
                raise ConfigError(f"task {self.name}: a multi-head task whose heads come from "
                                  "the data has no classes until it has its heads")
        elif self.metric not in METRICS:
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

    def _check_heads(self) -> None:
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ConfigError(f"task {self.name}: head names repeat: {names}")
        first = next((h for h in self.heads if h.is_classification), None)
        if first is None or tuple(self.classes) != first.classes:
            raise ConfigError(f"task {self.name}: classes must be the first classification "
                              "head's (they stratify the splits)")
        if self.metric != MULTIHEAD_METRIC:
            raise ConfigError(f"task {self.name}: a multi-head task's metric is "
                              f"{MULTIHEAD_METRIC!r}, got {self.metric!r}")

    @property
    def is_multihead(self) -> bool:
        """Several outputs; also true of a record whose heads come from the data (no heads
        yet, metric MULTIHEAD_METRIC) until its reader gives them (`with_heads`)."""
        return bool(self.heads) or self.metric == MULTIHEAD_METRIC

    @property
    def output_heads(self) -> tuple[Head, ...]:
        """What the model answers, as heads: a multi-head task's heads, or a single-label task's
        one classification head over its classes. The stages loop over these."""
        if self.heads or self.is_multihead:
            return self.heads
        return (Head(SINGLE_HEAD, "classification", self.classes),)

    def head(self, name: str) -> Head:
        for h in self.heads:
            if h.name == name:
                return h
        raise ConfigError(f"task {self.key}: no head {name!r}; heads: "
                          f"{', '.join(h.name for h in self.heads)}")

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
    def binary_positive(self) -> int:
        """The class index binary figures call positive (`positive_column`)."""
        return positive_column(self.positive_index)

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

    def with_heads(self, heads: tuple[Head, ...]) -> "Task":
        """A copy whose heads come from the data (the user's own labels.csv)."""
        first = next((h for h in heads if h.is_classification), None)
        if first is None:
            raise ConfigError(f"task {self.name}: at least one classification head is needed "
                              "(it stratifies the splits); found only "
                              f"{', '.join(h.name for h in heads) or 'no heads'}")
        return replace(self, classes=first.classes, source_labels=first.classes,
                       label_map={c: c for c in first.classes}, positive_class=None,
                       heads=tuple(heads))

    def with_dicom(self, window: str, frame: int) -> "Task":
        """A copy that reads DICOM files through `window` and `frame` (`--dicom-window`)."""
        return replace(self, preprocessing=replace(self.preprocessing, dicom_window=window,
                                                   dicom_frame=frame))

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
            **({"heads": [{"name": h.name, "kind": h.kind, "classes": list(h.classes),
                           "unit": h.unit, "loss": h.loss, "loss_weight": h.loss_weight}
                          for h in self.heads]} if self.heads else {}),
        }
