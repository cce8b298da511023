"""The model card: what stands behind a registered model, as Markdown for the model-version page
of the MLflow UI, plus the tags that let a registry search find it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from orchestrator.serving.contract import ServingSpec

SYNTHETIC_BANNER = ("## ⚠ SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES\n\nThis model was "
                    "trained and tested on generated images; its figures say nothing about real "
                    "patients and it must not be used on them.")


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
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


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def model_card(facts: CardFacts) -> str:
    spec = facts.spec
    held = spec.chosen_on
    metric = facts.test.get(facts.metric)
    # The first line is plain text: the registry's versions table shows it as the summary.
    lines = [f"MedSweep ensemble for {facts.task}"
             + (f": test {facts.metric} {metric.text()}" if metric else "")
             + ("; SYNTHETIC phantom data." if facts.synthetic else "."), ""]
    if facts.synthetic:
        lines += [SYNTHETIC_BANNER, ""]
    lines += [
        "## Task", "",
        f"Classes: {', '.join(f'`{c}`' for c in spec.classes)}"
        + (f"; positive class `{spec.positive_class}`." if spec.positive_class else "."),
        f"Selection metric: {facts.metric}.", "",
        "## Data", "",
        f"Data fingerprint `{facts.data_fingerprint}` (content, labels, groups and splits); "
        f"test split fingerprint `{facts.test_fingerprint}`.", "",
        *_table(["split", "images"], sorted(facts.split_counts.items())), "",
        *[f"- {note}" for note in facts.data_notes],
        *([""] if facts.data_notes else []),
        "## Members", "",
        f"TTA policy `{facts.tta_policy}` ({facts.tta_transforms} views per image); each member "
        "is its configuration's models averaged.", "",
        *_table(["configuration", "weight", "resolution", "models"],
                [(m, f"{w:.3f}", f"{r} px", k) for m, w, r, k in facts.members]), "",
        "## Performance", "",
        f"Every choice (members, weights, TTA policy, temperature, threshold, refer cut) was made "
        f"on {held} predictions; the test split was predicted once, afterwards. Test figures "
        "with 95% group-aware bootstrap intervals.", "",
        *_table(["metric", held, "test [95% interval]"],
                [(k, f"{facts.held_out[k]:.3f}" if k in facts.held_out else "", v.text())
                 for k, v in facts.test.items()]), "",
        "## Operating point and calibration", "",
        f"- Probabilities are calibrated by temperature scaling, T = {spec.temperature:.4f} "
        f"(fitted on {held} predictions).",
        (f"- `decision` is `{spec.positive_class}` when its calibrated probability is at least "
         f"{spec.threshold:.4f}." if spec.threshold is not None else
         "- `decision` is the most probable class."),
        (f"- `refer` is true when `confidence` (the calibrated probability of the decision) is "
         f"below {spec.refer_cut:.4f}: on {held} predictions the accepted cases reached accuracy "
         f"{spec.target_accuracy} with {spec.held_out_coverage:.1%} of cases accepted."
         if spec.refer_cut <= 1.0 else
         f"- `refer` is always true: no confidence reached accuracy {spec.target_accuracy} on "
         f"{held} predictions."), "",
        "## Intended use and limits", "",
        "- Research use: decision support to be read by a clinician, never a diagnosis on its "
        "own. Referred cases need a person.",
        "- Valid only for images like the training data (same modality, acquisition and "
        "preprocessing); figures come from one data set and do not transfer to other sites, "
        "scanners or populations without a new evaluation.",
        "- Small test splits give wide intervals: read the interval, not the point.", "",
        "## Lineage", "",
        f"Sweep run `{facts.sweep_run_id}`; ensemble run `{facts.ensemble_run_id}` (its "
        "artifacts hold report.html, the figures and the test predictions).",
    ]
    return "\n".join(lines) + "\n"


def card_tags(facts: CardFacts) -> dict[str, str]:
    metric = facts.test.get(facts.metric)
    tags = {"task": facts.task, "data_fingerprint": facts.data_fingerprint,
            "test_fingerprint": facts.test_fingerprint, "sweep_run": facts.sweep_run_id,
            "ensemble_run": facts.ensemble_run_id, "synthetic_data": str(facts.synthetic).lower()}
    if facts.spec.positive_class is not None:
        tags["positive_class"] = facts.spec.positive_class
    if metric is not None:
        tags[f"test_{facts.metric}"] = metric.text()
    return tags
