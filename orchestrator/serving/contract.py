"""The served model's answer and the spec it is read from (what goes in, and the door's limits,
is `inputs.py`).

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

A model fitted with out-of-distribution statistics (a spec with `ood`) adds, once per image,
`out_of_distribution` (its score above the cut fitted on held-out images, or a constant image)
and `ood_score` (`orchestrator.clinical.ood`); every head's `refer` is true where
`out_of_distribution` is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical import ood
from orchestrator.clinical.calibration import apply_temperature
from orchestrator.clinical.conformal import SetFit, set_labels, set_text
from orchestrator.clinical.referral import decide
from orchestrator.errors import ConfigError
from orchestrator.serving.inputs import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, InputLimits
from tasks.base import SINGLE_HEAD, Head

DECISION, CONFIDENCE, REFER = "decision", "confidence", "refer"
PROBABILITY_PREFIX = "prob_"
VALUE = "value"  # a regression head's column: `<head>_value`, in the head's unit
OUT_OF_DISTRIBUTION, OOD_SCORE = "out_of_distribution", "ood_score"  # once per image
PREDICTION_SET, SET_SIZE = "prediction_set", "set_size"  # a head with conformal sets


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
    sets: SetFit | None = None  # classification only: its prediction-set quantile(s)
    # classification only: how its images combine per patient (`clinical.patients.RULES`),
    # chosen on held-out groups; None (and absent from the file) when nothing backed a choice
    group_rule: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        self.head  # what the head is, checked where the task's heads are (`tasks.base.Head`)
        _check_group_rule(self.group_rule, self.name, self.is_classification)
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
        return _with_sets(_without_unset(out), self.sets)


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
    sets: SetFit | None = None  # the prediction-set quantile(s); None: logged before sets
    group_rule: str | None = None  # as HeadSpec's: mean or max per patient; None: none chosen

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        _check_group_rule(self.group_rule, "of the model", True)
        object.__setattr__(self, "sets", _sets(self.sets, "of the model", self.classes, True))
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
                         held_out_cases=self.held_out_cases, sets=self.sets,
                         group_rule=self.group_rule),)

    def to_dict(self) -> dict[str, Any]:
        """A single head's dict has no `heads` key: the format models were logged with before
        multi-head models existed."""
        out = {**asdict(self), "classes": list(self.classes)}
        del out["heads"]
        out = _with_sets(_without_unset(out), self.sets)
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
                   held_out_cases=first.held_out_cases, sets=first.sets,
                   group_rule=first.group_rule)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServingSpec":
        heads = tuple(HeadSpec(**h) for h in data.get("heads", ()))
        found = data.get("ood")
        return cls(**{**data, "classes": tuple(data["classes"]), "heads": heads,
                      "ood": OodSpec(**found) if found else None})


_SINCE_GUARANTEE = ("refer_level", "refer_lower_bound", "held_out_cases", "ood", "group_rule")


def _check_group_rule(rule: str | None, name: str, classification: bool) -> None:
    from orchestrator.clinical.patients import RULES

    if rule is None:
        return
    if not classification:
        raise ValueError(f"head {name}: a regression head has no group rule")
    if rule not in RULES:
        raise ValueError(f"head {name}: unknown group rule {rule!r}; valid: {', '.join(RULES)}")


def _without_unset(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields added since models were first logged are left out while unset, so a spec written
    without them reads, and is written back, the same."""
    return {k: v for k, v in spec.items() if not (k in _SINCE_GUARANTEE and v is None)}


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
    """The served columns in order, with their types (double, string, boolean, long):
    what the model's MLflow signature declares."""
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
