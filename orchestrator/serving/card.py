"""The model card: what stands behind a registered model, as Markdown for the model-version page
of the MLflow UI, plus the tags that let a registry search find it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from orchestrator import keys
from orchestrator.clinical.bootstrap import MIN_GROUPS, NO_INTERVAL, figure_text
from orchestrator.clinical.conformal import min_cases
from orchestrator.serving.checklist import ChecklistFacts, checklist_lines
from orchestrator.serving.contract import ServingSpec

SYNTHETIC_BANNER = ("## ⚠ SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES\n\nThis model was "
                    "trained and tested on generated images; its figures say nothing about real "
                    "patients and it must not be used on them.")


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float
    note: str = ""  # why there is no interval (bootstrap.interval_note); "" when it is sound

    def text(self, digits: int = 3) -> str:
        if self.note:
            return f"{self.point:.{digits}f} {NO_INTERVAL}"
        if self.low != self.low or self.high != self.high:  # NaN: no interval
            return f"{self.point:.{digits}f}"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class CardFacts:
    task: str
    metric: str  # the task's selection metric
    data_fingerprint: str
    test_fingerprint: str
    synthetic: bool
    split_counts: Mapping[str, int]  # split -> images
    members: Sequence[tuple[str, float, int, int]]  # configuration, weight, resolution, models
    tta_policy: str
    tta_transforms: int
    held_out: Mapping[str, float]  # metric -> value on the held-out (validation / OOF) cases
    test: Mapping[str, Interval]  # metric -> test value with its 95% interval
    spec: ServingSpec
    sweep_run_id: str
    ensemble_run_id: str
    data_notes: Sequence[str] = ()
    interval_notes: Sequence[str] = ()  # why some test figures have none (bootstrap.note_lines)
    checklist: ChecklistFacts | None = None  # the reporting checklist's facts (None: none)


_CHOICES = "members, weights, TTA policy, temperature, threshold, refer cut"
_CHOICES_OF_HEADS = "members, weights, TTA policy, each head's temperature and refer cut"


# Lists, not Markdown tables: the MLflow UI renders a model version's description with no table
# borders or padding, so a table's cells run together there ("splitimages").
def _figures(key: str, shown: str, held: str, held_out: Mapping[str, float],
             test: Interval) -> str:
    """`- accuracy: out-of-fold 0.854; test 0.933 [0.867, 0.983]` (no held-out figure: test
    only), a refer figure with no accepted case said in words."""
    value = held_out.get(key)
    before = f"{held} {value:.3f}; " if value is not None and value == value else ""
    after = figure_text(key, test.point, test.low, test.high, note=test.note)
    return f"- {shown}: {before}test {after}"


def model_card(facts: CardFacts) -> str:
    spec = facts.spec
    held = spec.chosen_on
    layout = _HEADS if spec.heads else _ONE_ANSWER
    metric = facts.test.get(facts.metric)
    # The first line is plain text: the registry's versions table shows it as the summary.
    lines = [f"MedSweep ensemble for {facts.task}"
             + (f": test {facts.metric} {metric.text()}" if metric else "")
             + ("; SYNTHETIC phantom data." if facts.synthetic else "."), ""]
    if facts.synthetic:
        lines += [SYNTHETIC_BANNER, ""]
    lines += [
        "## Task", "",
        *layout.task(spec),
        f"Selection metric: {facts.metric}.", "",
        "## Data", "",
        f"Data fingerprint `{facts.data_fingerprint}` (content, labels, groups and splits); "
        f"test split fingerprint `{facts.test_fingerprint}`.", "",
        "Images per split: " + ", ".join(f"{split} {n}"
                                         for split, n in sorted(facts.split_counts.items()))
        + ".", "",
        *[f"- {note}" for note in facts.data_notes],
        *([""] if facts.data_notes else []),
        "## Members", "",
        f"TTA policy `{facts.tta_policy}` ({facts.tta_transforms} views per image); each member "
        "is its configuration's models averaged.", "",
        *[f"- `{m}`: weight {w:.3f}, {r} px, {k} model(s)" for m, w, r, k in facts.members],
        "",
        "## Performance", "",
        f"Every choice ({layout.choices}) was made "
        f"on {held} predictions; the test split was predicted once, afterwards. Test figures "
        "with 95% group-aware bootstrap intervals.", "",
        *layout.performance(facts),
        *_interval_lines(facts),
        *layout.calibration(spec),
        *ood_lines(spec),
        *_sets_lines(spec),
        "## Intended use and limits", "",
        "- Research use: decision support to be read by a clinician, never a diagnosis on its "
        "own. Referred cases need a person.",
        "- Valid only for images like the training data (same modality, acquisition and "
        "preprocessing); figures come from one data set and do not transfer to other sites, "
        "scanners or populations without a new evaluation.",
        "- Small test splits give wide intervals: read the interval, not the point.",
        f"- Inputs: an image of more than {spec.max_pixels / 1e6:g} megapixels (read from its "
        f"header, before decoding) or with a side under {spec.min_side} px is refused with a "
        "message naming its row.", "",
        *(checklist_lines(facts, facts.checklist) if facts.checklist else []),
        "## Lineage", "",
        f"Sweep run `{facts.sweep_run_id}`; ensemble run `{facts.ensemble_run_id}` (its "
        "artifacts hold report.html, the figures and the test predictions).",
    ]
    return "\n".join(lines) + "\n"


def ood_lines(spec: ServingSpec) -> list[str]:
    """What the out-of-distribution flag is, its rate and what was checked (none: nothing)."""
    o = spec.ood
    if o is None:
        return []
    rate = (f"at most {o.false_alarm:.0%} of in-distribution images are expected above it "
            "(a split-conformal quantile)" if o.backed else
            f"{o.false_alarm:.0%} was asked but {o.held_out_cases} held-out images are too few "
            "to back it: the cut is their largest score, and the rate is not guaranteed")
    return ["## Out-of-distribution flag", "",
            f"- `out_of_distribution` is true when `ood_score` (the ensemble's weighted mean "
            f"over member models of the Mahalanobis distance of the `{o.layer}` features to the "
            f"nearest training class mean, tied Ledoit-Wolf covariance) is above {o.cut:.4f}, "
            "or the image is constant (one pixel value). Every `refer` is then true.",
            f"- The cut was fitted on {o.held_out_cases} {o.scored_on} images, never the test "
            f"split; {rate}; {o.held_out_flagged:.1%} of those held-out images were above it.",
            "- Checked (docs/benchmarks.md): images of another task, uniform noise, blank, "
            "inverted and heavily blurred images are flagged; images close to the training "
            "data, such as a class the model never saw drawn the same way, mostly are not.", ""]


def _answer_task(spec: ServingSpec) -> list[str]:
    return [f"Classes: {', '.join(f'`{c}`' for c in spec.classes)}"
            + (f"; positive class `{spec.positive_class}`." if spec.positive_class else ".")]


def _answer_performance(facts: CardFacts) -> list[str]:
    return [*(_figures(k, k, facts.spec.chosen_on, facts.held_out, v)
              for k, v in facts.test.items()), ""]


def _answer_calibration(spec: ServingSpec) -> list[str]:
    held = spec.chosen_on
    return [
        "## Operating point and calibration", "",
        f"- Probabilities are calibrated by temperature scaling, T = {spec.temperature:.4f} "
        f"(fitted on {held} predictions).",
        (f"- `decision` is `{spec.positive_class}` when its calibrated probability is at "
         f"least {spec.threshold:.4f}." if spec.threshold is not None else
         "- `decision` is the most probable class."),
        "- " + _refer_sentence(spec.answered_heads[0], held), ""]


def _refer_sentence(h, held: str) -> str:
    """What `refer` means for one classification head (a `HeadSpec`), and what backs its cut:
    the simultaneous lower bound on the accepted cases' accuracy, where the spec records one
    (models logged before it gave only the held-out accuracy)."""
    refer, confidence = h.column("refer"), h.column("confidence")
    cases = f"{h.held_out_cases} " if h.held_out_cases else ""
    if h.refer_cut > 1.0:
        return (f"`{refer}` is always true: no confidence level supports accuracy "
                f"{h.target_accuracy} on these {cases}{held} cases"
                + (f" at the {h.refer_level:.0%} level" if h.refer_level else "")
                + ", so every case is referred to a person (lower the target or add data).")
    text = (f"`{refer}` is true when `{confidence}` is below {h.refer_cut:.4f} (the "
            "calibrated probability of the decision): ")
    if h.refer_lower_bound is None:
        return text + (f"on {held} predictions the accepted cases reached accuracy "
                       f"{h.target_accuracy} with {h.held_out_coverage:.1%} of cases accepted.")
    return text + (f"{h.held_out_coverage:.1%} of {cases}{held} cases accepted, whose accuracy "
                   f"has a {h.refer_level:.0%} lower bound of {h.refer_lower_bound:.3f} (at or "
                   f"above the target {h.target_accuracy}; one-sided Clopper-Pearson, "
                   "simultaneous over the candidate cuts).")


def _sets_rule(head, held: str) -> str:
    """How one head's `prediction_set` is made, in a sentence."""
    sets, column = head.sets, head.column
    if sets.conditional:
        quantiles = "; ".join(f"`{c}` {q:.4f} ({n} cases)" if q <= 1.0 else
                              f"`{c}` infinite ({n} cases, fewer than {min_cases(sets.coverage)}: "
                              "in every set)"
                              for c, q, n in zip(head.classes, sets.quantiles, sets.cases))
        rule = f"one quantile per true class (class-conditional): {quantiles}"
    elif sets.quantiles[0] <= 1.0:
        rule = f"quantile {sets.quantiles[0]:.4f} from {sets.cases[0]} {held} cases"
    else:
        rule = (f"the quantile is infinite: {sets.cases[0]} {held} cases are fewer than the "
                f"{min_cases(sets.coverage)} it needs, so every set holds every class")
    return (f"`{column('prediction_set')}` lists, most probable first, the classes whose "
            "calibrated probability ranked above them is at most the quantile (split-conformal "
            f"adaptive prediction sets at {sets.coverage:.0%} nominal coverage, fitted on {held} "
            f"predictions; {rule}); `{column('set_size')}` counts them.")


def _sets_lines(spec: ServingSpec) -> list[str]:
    """The prediction sets, head by head; nothing for a spec without them."""
    heads = [h for h in spec.answered_heads if h.is_classification and h.sets is not None]
    if not heads:
        return []
    return (["## Prediction sets", ""]
            + [f"- {f'`{h.name}`: ' if h.named else ''}{_sets_rule(h, spec.chosen_on)}"
               for h in heads]
            + ["- The coverage holds on average over cases (not for each case) if new cases are "
               "exchangeable with the held-out ones: same population, site and scanner. The "
               "test coverage above is the check.", ""])


def _interval_lines(facts: CardFacts) -> list[str]:
    """Under the test figures: why those marked [no interval] have none."""
    if not facts.interval_notes:
        return []
    return ([f"- {line[0].upper()}{line[1:]}." for line in facts.interval_notes]
            + [f"- A percentile bootstrap needs at least {MIN_GROUPS} groups (patients, "
               "lesions or duplicate clusters) before its interval means anything; with fewer, "
               "or at zero width, only the point is given.", ""])


def _head_text(head) -> str:
    if head.is_classification:
        return (f"classification, {len(head.classes)} classes: "
                f"{', '.join(f'`{c}`' for c in head.classes)}")
    return f"regression, in {head.unit}" if head.unit else "regression"


def _heads_lines(spec: ServingSpec) -> list[str]:
    """A multi-head model's task: one line per head and the columns it answers in."""
    return ([f"{len(spec.heads)} heads, each answered in its own columns:", ""]
            + [f"- `{h.name}`: {_head_text(h)} (columns "
               f"{', '.join(f'`{c}`' for c, _ in h.columns())})." for h in spec.heads]
            + [""])


def _heads_performance(facts: CardFacts) -> list[str]:
    """The figures over all heads, then a table per head (its figures named without the
    `<head>_` prefix)."""
    held = facts.spec.chosen_on
    names = [h.name for h in facts.spec.heads]

    def row(key: str, shown: str) -> str:
        return _figures(key, shown, held, facts.held_out, facts.test[key])

    overall = [k for k in facts.test if not any(k.startswith(f"{n}_") for n in names)]
    lines = [*(row(k, k) for k in overall), ""]
    for head in facts.spec.heads:
        keys = [k for k in facts.test if k.startswith(f"{head.name}_")]
        lines += [f"### {head.name} ({_head_text(head)})", "",
                  *(row(k, k[len(head.name) + 1:]) for k in keys), ""]
    return lines


def _heads_calibration(spec: ServingSpec) -> list[str]:
    held = spec.chosen_on
    lines = ["## Calibration and referral, head by head", ""]
    for h in spec.heads:
        if not h.is_classification:
            lines.append(f"- `{h.name}_value`: the members' weighted mean"
                         + (f", in {h.unit}" if h.unit else "") + "; nothing is fitted.")
            continue
        refer = _refer_sentence(h, held)
        lines.append(f"- `{h.name}`: probabilities calibrated by temperature scaling, "
                     f"T = {h.temperature:.4f} (fitted on {held} predictions of this head); "
                     f"`{h.name}_decision` is the most probable class; {refer}")
    return lines + [""]


@dataclass(frozen=True)
class _Layout:
    """How the card words a model's answer: one answer, or a section per head."""

    choices: str
    task: Callable[[ServingSpec], list[str]]
    performance: Callable[[CardFacts], list[str]]
    calibration: Callable[[ServingSpec], list[str]]


_ONE_ANSWER = _Layout(_CHOICES, _answer_task, _answer_performance, _answer_calibration)
_HEADS = _Layout(_CHOICES_OF_HEADS, _heads_lines, _heads_performance, _heads_calibration)


def card_tags(facts: CardFacts) -> dict[str, str]:
    metric = facts.test.get(facts.metric)
    tags = {keys.VERSION_TASK: facts.task, keys.VERSION_DATA_FINGERPRINT: facts.data_fingerprint,
            keys.VERSION_TEST_FINGERPRINT: facts.test_fingerprint,
            keys.VERSION_SWEEP_RUN: facts.sweep_run_id,
            keys.VERSION_ENSEMBLE_RUN: facts.ensemble_run_id,
            keys.VERSION_SYNTHETIC: str(facts.synthetic).lower()}
    if facts.spec.positive_class is not None:
        tags[keys.VERSION_POSITIVE_CLASS] = facts.spec.positive_class
    named = [h.name for h in facts.spec.answered_heads if h.named]
    if named:
        tags[keys.VERSION_HEADS] = ",".join(named)
    if metric is not None:
        tags[keys.version_metric_tag(facts.metric)] = metric.text()
    return tags
