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

A model fitted with out-of-distribution statistics (a spec with `ood`) adds, once per image,
`out_of_distribution` (its score above the cut fitted on held-out images, or a constant image)
and `ood_score` (`orchestrator.clinical.ood`); every head's `refer` is true where
`out_of_distribution` is.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from orchestrator.clinical import ood
from orchestrator.clinical.calibration import apply_temperature
from orchestrator.clinical.referral import decide
from orchestrator.data.cache import decode_bytes, decode_image
from orchestrator.errors import ConfigError
from tasks.base import SINGLE_HEAD, Head

IMAGE, PATH = "image", "path"
DECISION, CONFIDENCE, REFER = "decision", "confidence", "refer"
PROBABILITY_PREFIX = "prob_"
VALUE = "value"  # a regression head's column: `<head>_value`, in the head's unit
OUT_OF_DISTRIBUTION, OOD_SCORE = "out_of_distribution", "ood_score"  # once per image


DEFAULT_MAX_PIXELS = 50_000_000  # 7,071 px square: far above any scan the models resize down
DEFAULT_MIN_SIDE = 16  # below this a model reads nothing but its own resizing


class InputError(ValueError):
    """Input the model cannot read; the message names the row."""


@dataclass(frozen=True)
class InputLimits:
    """What the door lets in. The pixel count is read from the file's header before any pixel
    is decoded: a 380 KiB PNG can declare 20,000 x 20,000 pixels and decode to 400 MB (1.2 GB as
    colour), enough to take a server's memory. Versioned in the spec (`max_pixels`,
    `min_side`)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1:
            raise ValueError(f"input limits must be >= 1, got max_pixels {self.max_pixels}, "
                             f"min_side {self.min_side}")

    def check(self, width: int, height: int, row: int, what: str = "the image") -> None:
        """Raise InputError naming the row when a `width` x `height` image is out of bounds."""
        if width * height > self.max_pixels:
            raise InputError(f"row {row}: {what} is {width} x {height} pixels "
                             f"({width * height / 1e6:.1f} megapixels), above the limit of "
                             f"{self.max_pixels / 1e6:g} megapixels; send it downscaled")
        if min(width, height) < self.min_side:
            raise InputError(f"row {row}: {what} is {width} x {height} pixels; its shorter "
                             f"side is below the minimum of {self.min_side} px")


def check_declared(source: bytes | str, row: int, limits: InputLimits) -> None:
    """Refuse an encoded image (bytes or a file) whose header declares a size outside `limits`,
    decoding no pixel. Formats Pillow does not know pass (OpenCV then decodes them, within its
    own 1-gigapixel cap, and the decoded size is checked). Pillow itself refuses a header of more
    than twice its bomb limit (179 megapixels); that is refused here with the count it read."""
    import io
    import re
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise InputError(f"row {row}: the image declares {count} in its header, above the "
                         f"limit of {limits.max_pixels / 1e6:g} megapixels; send it "
                         "downscaled") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return
    limits.check(width, height, row, what="the image" if isinstance(source, bytes) else source)


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
    # What backs the cut (`clinical.referral`): the level of the simultaneous lower bound on the
    # accepted cases' accuracy, that bound, and the held-out cases it rests on. None in specs
    # logged before the rule had a guarantee (and left out of their files).
    refer_level: float | None = None
    refer_lower_bound: float | None = None
    held_out_cases: int | None = None
    # A single-label model's one head only (`ServingSpec.answered_heads`): its binary threshold
    # on the calibrated positive probability, and its columns carry no head name.
    threshold: float | None = None
    positive_class: str | None = None
    named: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        self.head  # what the head is, checked where the task's heads are (`tasks.base.Head`)
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
        """(served column, type: double, string or boolean), in order."""
        if not self.is_classification:
            return [(self.column(VALUE), "double")]
        return class_columns(self.classes, self.column)

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
        return columns

    def to_dict(self) -> dict[str, Any]:
        """A multi-head model's head as its spec file records it (the format since multi-head
        models exist: no threshold, positive class or naming flag)."""
        out = {**asdict(self), "classes": list(self.classes)}
        for key in ("threshold", "positive_class", "named"):
            del out[key]
        return _without_unset(out)


@dataclass(frozen=True)
class OodSpec:
    """The out-of-distribution cut as fitted at build time (`clinical.ood.fit_cut`) and where
    its scores come from: each member model's embedding `layer`, the statistics in one file
    per member model beside the spec."""

    cut: float  # flag when the ensemble's score is above it
    false_alarm: float  # the stated rate the cut was fitted at
    layer: str
    held_out_cases: int
    held_out_flagged: float
    backed: bool = True  # False: too few held-out cases for the rate (`ood.min_cases`)
    scored_on: str = "validation"  # or "out-of-fold"

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm < 0.5:
            raise ValueError(f"OOD false-alarm rate must be in (0, 0.5), got {self.false_alarm}")

    def columns(self) -> list[tuple[str, str]]:
        return [(OUT_OF_DISTRIBUTION, "boolean"), (OOD_SCORE, "double")]


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
    refer_level: float | None = None  # as HeadSpec's: what backs the cut
    refer_lower_bound: float | None = None
    held_out_cases: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # the door (`InputLimits`); older specs get these
    min_side: int = DEFAULT_MIN_SIDE
    ood: OodSpec | None = None  # absent in specs logged before the OOD flag, and in their files

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.threshold is not None and (len(self.classes) != 2
                                           or self.positive_class not in self.classes):
            raise ValueError("a threshold needs two classes and a positive class among them")
        self.input_limits  # checked as the door will read them

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.classes.index(self.positive_class)

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_pixels, self.min_side)

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
                         positive_class=self.positive_class, named=False,
                         refer_level=self.refer_level, refer_lower_bound=self.refer_lower_bound,
                         held_out_cases=self.held_out_cases),)

    def to_dict(self) -> dict[str, Any]:
        """A single head's dict has no `heads` key: the format models were logged with before
        multi-head models existed."""
        out = {**asdict(self), "classes": list(self.classes)}
        del out["heads"]
        out = _without_unset(out)
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
                   refer_level=first.refer_level, refer_lower_bound=first.refer_lower_bound,
                   held_out_cases=first.held_out_cases)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServingSpec":
        heads = tuple(HeadSpec(**h) for h in data.get("heads", ()))
        found = data.get("ood")
        return cls(**{**data, "classes": tuple(data["classes"]), "heads": heads,
                      "ood": OodSpec(**found) if found else None})


_SINCE_GUARANTEE = ("refer_level", "refer_lower_bound", "held_out_cases", "ood")


def _without_unset(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields added since models were first logged are left out while unset, so a spec written
    without them reads, and is written back, the same."""
    return {k: v for k, v in spec.items() if not (k in _SINCE_GUARANTEE and v is None)}


def probability_columns(classes: Sequence[str]) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{c}" for c in classes]


def output_columns(spec: ServingSpec) -> list[tuple[str, str]]:
    """The served columns in order, with their types (double, string, boolean): what the
    model's MLflow signature declares."""
    return ([column for head in spec.answered_heads for column in head.columns()]
            + (spec.ood.columns() if spec.ood is not None else []))


def class_columns(classes: Sequence[str], column: Callable[[str], str] = str,
                  ) -> list[tuple[str, str]]:
    """A classification head's served columns, with their types (`column` names them)."""
    return ([(column(c), "double") for c in probability_columns(classes)]
            + [(column(DECISION), "string"), (column(CONFIDENCE), "double"),
               (column(REFER), "boolean")])


def answer(raw_probs: np.ndarray, spec: ServingSpec, ood_scores: np.ndarray | None = None,
           constant: np.ndarray | None = None) -> pd.DataFrame:
    """The members' averaged output (N, D) (each classification head's C probabilities, each
    regression head's value, in head order) -> one block of columns per head; with the spec's
    OOD cut, the ensemble's `ood_scores` (N,) and which images are `constant` (N,) add the OOD
    columns and refer every flagged image."""
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
    if spec.ood is not None:
        columns.update(ood_columns(spec, raw.shape[0], ood_scores, constant, columns))
    return pd.DataFrame(columns)


def ood_columns(spec: ServingSpec, rows: int, scores, constant,
                columns: Mapping[str, Any]) -> dict[str, Any]:
    """`out_of_distribution`, `ood_score`, and every classification head's `refer` or-ed
    with the flag."""
    if scores is None or constant is None or len(scores) != rows or len(constant) != rows:
        raise ValueError(f"the spec has an OOD cut: {rows} OOD scores and constant flags are "
                         f"needed, got {None if scores is None else len(scores)}")
    flagged = ood.flag(scores, spec.ood.cut, constant)
    out: dict[str, Any] = {h.column(REFER): np.asarray(columns[h.column(REFER)]) | flagged
                           for h in spec.answered_heads if h.is_classification}
    out[OUT_OF_DISTRIBUTION] = flagged
    out[OOD_SCORE] = np.asarray(scores, dtype=np.float64)
    return out


def decode_inputs(model_input: Any, limits: InputLimits = InputLimits()) -> list[np.ndarray]:
    """Any accepted input -> decoded uint8 images, gray (H, W) or BGR (H, W, 3), the way the
    training cache decodes files. Raises InputError naming the first bad row: unreadable, or
    outside `limits` (an encoded file's size read from its header, before decoding)."""
    if isinstance(model_input, Mapping) and not isinstance(model_input, pd.DataFrame):
        if set(model_input) - {IMAGE, PATH}:
            raise InputError(f"unknown input(s) {sorted(set(model_input) - {IMAGE, PATH})}; "
                             f"send `{IMAGE}` (encoded images or a uint8 tensor) or `{PATH}`")
        model_input = (model_input[IMAGE] if IMAGE in model_input
                       else pd.DataFrame({PATH: model_input[PATH]}))
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return _tensor_images(model_input, limits)
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
            img = read_checked(str(path), row, limits)
        else:
            img = _image_of(value, row, limits)
        images.append(img)
    return images


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def read_checked(path: str, row: int, limits: InputLimits) -> np.ndarray:
    """A local file, its declared size checked before it is decoded."""
    check_declared(path, row, limits)
    img = decode_image(path)
    if img is None:
        raise InputError(f"row {row}: {path} is missing or not a readable image")
    limits.check(img.shape[1], img.shape[0], row, what=path)
    return img


def _image_of(value: Any, row: int, limits: InputLimits) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"row {row}: `{IMAGE}` text is not base64") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        img = _decoded(value, row, limits)
        if img is None:  # MLflow's `inputs` JSON form hands over the base64 text as bytes
            try:
                encoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                encoded = b""
            img = _decoded(encoded, row, limits) if encoded else None
        if img is None:
            head = bytes(value[:8]).hex(" ") if len(value) else "nothing"
            raise InputError(f"row {row}: {len(value)} bytes that are not an image "
                             f"(JPEG, PNG, ...; they start {head})")
        return img
    return _pixels(np.asarray(value), row, limits)


def _decoded(data: bytes, row: int, limits: InputLimits) -> np.ndarray | None:
    """Encoded bytes -> pixels, the header's size checked first; None if not an image."""
    check_declared(data, row, limits)
    img = decode_bytes(data)
    if img is not None:
        limits.check(img.shape[1], img.shape[0], row)
    return img


def _tensor_images(tensor: np.ndarray, limits: InputLimits) -> list[np.ndarray]:
    if tensor.ndim not in (3, 4):
        raise InputError(f"a tensor must be (N, H, W, 3) or (N, H, W); got shape "
                         f"{tensor.shape}")
    if len(tensor) == 0:
        raise InputError("empty batch: no images to predict")
    return [_pixels(img, row, limits) for row, img in enumerate(tensor)]


def _pixels(img: np.ndarray, row: int, limits: InputLimits) -> np.ndarray:
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
        limits.check(img.shape[1], img.shape[0], row)
        return img
    if img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 0:
        limits.check(img.shape[1], img.shape[0], row)
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    raise InputError(f"row {row}: image shape {img.shape} is not (H, W, 3) RGB or (H, W) gray")
