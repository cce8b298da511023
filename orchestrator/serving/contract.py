"""The served model's input and output contract.

Inputs, one image per row, any of:
- a column `image` of encoded image files (JPEG, PNG, ...): bytes, or their base64 text, which is
  what a REST client sends (MLflow's server decodes base64 for the `binary` column);
- a uint8 tensor, (N, H, W, 3) RGB or (N, H, W) gray, directly or as `{"image": tensor}`;
- a column `path` of local files, for batch use.

Output, one row per image: `prob_<class>` (calibrated by the fitted temperature), `decision`
(the validated threshold for a binary task, else the most probable class), `confidence` (the
calibrated probability of the decision) and `refer` (confidence below the validated cut).

A multi-head model (a spec with `heads`) answers one block of columns per head, in the task's
head order: a classification head `<head>_prob_<class>`, `<head>_decision` (the most probable
calibrated class, also for two classes), `<head>_confidence` and `<head>_refer`, each with its
own temperature and refer cut; a regression head `<head>_value`, in the head's unit.

A classification head whose spec holds prediction sets (`sets`, fitted on held-out predictions
since conformal sets exist; `orchestrator.clinical.conformal`) also answers `prediction_set`
(JSON list text of its classes, most probable first: '["glioma", "meningioma"]') and
`set_size` (how many), `<head>_`-named in a multi-head model. A spec without sets (every model
logged before) answers without those two columns, as it always did.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from orchestrator.clinical.calibration import apply_temperature
from orchestrator.clinical.conformal import SetFit, set_labels, set_text
from orchestrator.clinical.referral import decide
from orchestrator.data.cache import decode_bytes, decode_image
from orchestrator.errors import ConfigError
from tasks.base import SINGLE_HEAD, Head

IMAGE, PATH = "image", "path"
DECISION, CONFIDENCE, REFER = "decision", "confidence", "refer"
PROBABILITY_PREFIX = "prob_"
VALUE = "value"  # a regression head's column: `<head>_value`, in the head's unit
PREDICTION_SET, SET_SIZE = "prediction_set", "set_size"  # a head with conformal sets


class InputError(ValueError):
    """Input the model cannot read; the message names the row."""


@dataclass(frozen=True)
class HeadSpec:
    """One head of a multi-head model as its spec file records it: the task's head (name, kind,
    classes, unit: validated as `tasks.base.Head`) and what was fitted for it, a classification
    head's temperature and refer cut (on held-out predictions of that head only)."""

    name: str
    kind: str  # "classification" or "regression"
    classes: tuple[str, ...] = ()
    unit: str = ""
    temperature: float | None = None  # classification only
    refer_cut: float | None = None  # classification only: refer when confidence is below it
    target_accuracy: float | None = None
    held_out_coverage: float | None = None
    # A single-label model's one head only (`ServingSpec.answered_heads`): its binary threshold
    # on the calibrated positive probability, and its columns carry no head name.
    threshold: float | None = None
    positive_class: str | None = None
    named: bool = True
    sets: SetFit | None = None  # classification only: its prediction-set quantile(s)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        self.head  # what the head is, checked where the task's heads are (`tasks.base.Head`)
        object.__setattr__(self, "sets", _sets(self.sets, self.name, self.classes,
                                               self.is_classification))
        if self.is_classification:
            if self.temperature is None or self.refer_cut is None:
                raise ValueError(f"head {self.name}: a classification head needs >= 2 classes, "
                                 "a temperature and a refer cut")
            if self.temperature <= 0:
                raise ValueError(f"head {self.name}: temperature must be > 0, got "
                                 f"{self.temperature}")

    @property
    def head(self) -> Head:
        """The task's head this answers for (its name, kind, classes, unit)."""
        try:
            return Head(self.name, self.kind, self.classes, self.unit)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def width(self) -> int:
        """Its columns in the members' averaged (N, D) matrix."""
        return self.head.width

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.classes.index(self.positive_class)

    def column(self, name: str) -> str:
        """`decision` of head `shape` -> `shape_decision`; a single-label model's: `decision`."""
        return f"{self.name}_{name}" if self.named else name

    def columns(self) -> list[tuple[str, str]]:
        """(served column, type: double, string, boolean or long), in order."""
        if not self.is_classification:
            return [(self.column(VALUE), "double")]
        return class_columns(self.classes, self.column) + (
            set_columns(self.column) if self.sets is not None else [])

    def answer(self, block: np.ndarray) -> dict[str, Any]:
        """This head's block of the members' averaged output -> its served columns."""
        if not self.is_classification:
            return {self.column(VALUE): block[:, 0].astype(np.float64)}
        calibrated = apply_temperature(block, self.temperature)
        decision, confidence = decide(calibrated, self.threshold, self.positive_index)
        columns: dict[str, Any] = {self.column(name): calibrated[:, k]
                                   for k, name in enumerate(probability_columns(self.classes))}
        columns[self.column(DECISION)] = [self.classes[k] for k in decision]
        columns[self.column(CONFIDENCE)] = confidence
        columns[self.column(REFER)] = confidence < self.refer_cut
        if self.sets is not None:
            labels = set_labels(calibrated, self.sets, self.classes)
            columns[self.column(PREDICTION_SET)] = [set_text(s) for s in labels]
            columns[self.column(SET_SIZE)] = np.array([len(s) for s in labels], dtype=np.int64)
        return columns

    def to_dict(self) -> dict[str, Any]:
        """A multi-head model's head as its spec file records it (the format since multi-head
        models exist: no threshold, positive class or naming flag)."""
        out = {**asdict(self), "classes": list(self.classes)}
        for key in ("threshold", "positive_class", "named"):
            del out[key]
        return _with_sets(out, self.sets)


@dataclass(frozen=True)
class ServingSpec:
    """Everything after the members' averaged probabilities, versioned with the model.

    With `heads` (a multi-head model) the answer comes from the heads alone; the single-head
    fields then repeat the first classification head's (as `Task.classes` does)."""

    classes: tuple[str, ...]
    temperature: float
    refer_cut: float  # refer when the calibrated confidence is below it
    target_accuracy: float  # what the accepted held-out cases reached at the cut
    held_out_coverage: float  # share of held-out cases accepted at the cut
    positive_class: str | None = None
    threshold: float | None = None  # on the calibrated positive probability; binary tasks only
    chosen_on: str = "validation"  # or "out-of-fold"
    heads: tuple[HeadSpec, ...] = ()  # a multi-head model's; () for a single head
    sets: SetFit | None = None  # the prediction-set quantile(s); None: logged before sets

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "sets", _sets(self.sets, "of the model", self.classes, True))
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.threshold is not None and (len(self.classes) != 2
                                           or self.positive_class not in self.classes):
            raise ValueError("a threshold needs two classes and a positive class among them")

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.classes.index(self.positive_class)

    @property
    def answered_heads(self) -> tuple[HeadSpec, ...]:
        """What the model answers, head by head: a multi-head model's heads, or a single-label
        model's one head (its columns `prob_<class>`, `decision`, ... without a head name). The
        one place the two spec formats meet."""
        if self.heads:
            return self.heads
        return (HeadSpec(SINGLE_HEAD, "classification", self.classes,
                         temperature=self.temperature, refer_cut=self.refer_cut,
                         target_accuracy=self.target_accuracy,
                         held_out_coverage=self.held_out_coverage, threshold=self.threshold,
                         positive_class=self.positive_class, named=False, sets=self.sets),)

    def to_dict(self) -> dict[str, Any]:
        """A single head's dict has no `heads` key: the format models were logged with before
        multi-head models existed."""
        out = {**asdict(self), "classes": list(self.classes)}
        del out["heads"]
        out = _with_sets(out, self.sets)
        if self.heads:
            out["heads"] = [h.to_dict() for h in self.heads]
        return out

    @classmethod
    def of_heads(cls, heads: Sequence[HeadSpec], chosen_on: str) -> "ServingSpec":
        """The spec of the heads a model answers: a single-label model's one unnamed head in
        the flat format (no `heads`), else every head, the flat fields repeating the first
        classification head's (as `Task.classes` does)."""
        first = next(h for h in heads if h.is_classification)
        return cls(classes=first.classes, temperature=first.temperature,
                   refer_cut=first.refer_cut, target_accuracy=first.target_accuracy,
                   held_out_coverage=first.held_out_coverage,
                   positive_class=first.positive_class, threshold=first.threshold,
                   chosen_on=chosen_on, heads=tuple(h for h in heads if h.named),
                   sets=first.sets)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServingSpec":
        heads = tuple(HeadSpec(**h) for h in data.get("heads", ()))
        return cls(**{**data, "classes": tuple(data["classes"]), "heads": heads})


def _sets(sets: SetFit | Mapping[str, Any] | None, name: str, classes: Sequence[str],
          classification: bool) -> SetFit | None:
    """A spec's prediction sets as read from its file (a dict) or given; checked against the
    head's classes."""
    if sets is None:
        return None
    if not classification:
        raise ValueError(f"head {name}: a regression head has no prediction sets")
    sets = SetFit.from_dict(sets)
    if sets.conditional and len(sets.quantiles) != len(classes):
        raise ValueError(f"head {name}: {len(sets.quantiles)} set quantiles for "
                         f"{len(classes)} classes")
    return sets


def _with_sets(out: dict[str, Any], sets: SetFit | None) -> dict[str, Any]:
    """A spec dict with its sets as a plain dict, or without the key (the format before sets
    existed)."""
    del out["sets"]
    return {**out, "sets": sets.to_dict()} if sets is not None else out


def set_columns(column: Callable[[str], str] = str) -> list[tuple[str, str]]:
    """A classification head's prediction-set columns (after its other columns)."""
    return [(column(PREDICTION_SET), "string"), (column(SET_SIZE), "long")]


def probability_columns(classes: Sequence[str]) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{c}" for c in classes]


def output_columns(spec: ServingSpec) -> list[tuple[str, str]]:
    """The served columns in order, with their types (double, string, boolean, long): what
    the model's MLflow signature declares."""
    return [column for head in spec.answered_heads for column in head.columns()]


def class_columns(classes: Sequence[str], column: Callable[[str], str] = str,
                  ) -> list[tuple[str, str]]:
    """A classification head's served columns, with their types (`column` names them)."""
    return ([(column(c), "double") for c in probability_columns(classes)]
            + [(column(DECISION), "string"), (column(CONFIDENCE), "double"),
               (column(REFER), "boolean")])


def answer(raw_probs: np.ndarray, spec: ServingSpec) -> pd.DataFrame:
    """The members' averaged output (N, D) (each classification head's C probabilities, each
    regression head's value, in head order) -> one block of columns per head."""
    raw, heads = np.asarray(raw_probs), spec.answered_heads
    width = sum(h.width for h in heads)
    if raw.ndim != 2 or raw.shape[1] != width:
        raise ValueError(f"the members' output has shape {raw.shape}; the heads "
                         f"{', '.join(h.name for h in heads)} take {width} columns")
    columns: dict[str, Any] = {}
    start = 0
    for head in heads:
        columns.update(head.answer(raw[:, start:start + head.width]))
        start += head.width
    return pd.DataFrame(columns)


def decode_inputs(model_input: Any) -> list[np.ndarray]:
    """Any accepted input -> decoded uint8 images, gray (H, W) or BGR (H, W, 3), the way the
    training cache decodes files. Raises InputError naming the first bad row."""
    if isinstance(model_input, Mapping) and not isinstance(model_input, pd.DataFrame):
        if set(model_input) - {IMAGE, PATH}:
            raise InputError(f"unknown input(s) {sorted(set(model_input) - {IMAGE, PATH})}; "
                             f"send `{IMAGE}` (encoded images or a uint8 tensor) or `{PATH}`")
        model_input = (model_input[IMAGE] if IMAGE in model_input
                       else pd.DataFrame({PATH: model_input[PATH]}))
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return _tensor_images(model_input)
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        frame = pd.DataFrame({PATH: list(model_input)})
    else:
        raise InputError(f"cannot read a {type(model_input).__name__}: send a column "
                         f"`{IMAGE}` of base64 images, a uint8 tensor, or a column `{PATH}`")
    if len(frame) == 0:
        raise InputError("empty batch: no images to predict")
    if IMAGE not in frame.columns and PATH not in frame.columns:
        raise InputError(f"no `{IMAGE}` or `{PATH}` column (got {list(frame.columns)})")
    images = []
    for row in range(len(frame)):
        value = frame[IMAGE].iloc[row] if IMAGE in frame.columns else None
        if _missing(value):
            path = frame[PATH].iloc[row] if PATH in frame.columns else None
            if _missing(path):
                raise InputError(f"row {row}: neither `{IMAGE}` nor `{PATH}` is given")
            img = decode_image(str(path))
            if img is None:
                raise InputError(f"row {row}: {path} is missing or not a readable image")
        else:
            img = _image_of(value, row)
        images.append(img)
    return images


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def _image_of(value: Any, row: int) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"row {row}: `{IMAGE}` text is not base64") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        img = decode_bytes(value)
        if img is None:  # MLflow's `inputs` JSON form hands over the base64 text as bytes
            img = _decoded_base64(value)
        if img is None:
            head = bytes(value[:8]).hex(" ") if len(value) else "nothing"
            raise InputError(f"row {row}: {len(value)} bytes that are not an image "
                             f"(JPEG, PNG, ...; they start {head})")
        return img
    return _pixels(np.asarray(value), row)


def _decoded_base64(value: bytes) -> np.ndarray | None:
    try:
        return decode_bytes(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def _tensor_images(tensor: np.ndarray) -> list[np.ndarray]:
    if tensor.ndim not in (3, 4):
        raise InputError(f"a tensor must be (N, H, W, 3) or (N, H, W); got shape "
                         f"{tensor.shape}")
    if len(tensor) == 0:
        raise InputError("empty batch: no images to predict")
    return [_pixels(img, row) for row, img in enumerate(tensor)]


def _pixels(img: np.ndarray, row: int) -> np.ndarray:
    """One uint8 RGB (H, W, 3) or gray (H, W) image -> the decoder's gray or BGR."""
    if img.dtype != np.uint8:
        # JSON carries integers: accept whole numbers in 0..255, refuse anything else.
        whole = img.dtype.kind in "iu" and img.size and img.min() >= 0 and img.max() <= 255
        if not whole:
            raise InputError(f"row {row}: pixels must be uint8 (whole numbers 0-255); got "
                             f"dtype {img.dtype}" + (f" with values {img.min()}..{img.max()}"
                                                     if img.size and img.dtype.kind in "iuf"
                                                     else ""))
        img = img.astype(np.uint8)
    if img.ndim == 2 and min(img.shape) > 0:
        return img
    if img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 0:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    raise InputError(f"row {row}: image shape {img.shape} is not (H, W, 3) RGB or (H, W) gray")
