"""The model card's reporting checklist: the items of TRIPOD+AI and CLAIM that the run itself
knows, filled from what it recorded, and the items only a person can state, marked so. Written
as "**Item**: value" lines because MLflow's Markdown shows tables without borders or padding."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from orchestrator import keys
from orchestrator.clinical.flow import COPY_LEFT_OUT, Flow, Stage

TO_BE_STATED = "_to be stated by the authors_"
PERSON_ITEMS = ("Intended use", "Target population", "Clinical setting",
                "Reference standard (how labels were made)", "Sample size rationale")
HEADING = "## Reporting checklist (TRIPOD+AI, CLAIM)"


@dataclass(frozen=True)
class ChecklistFacts:
    """What the ensemble run knows about its data and models, beyond `CardFacts`."""

    source: str  # the data folder's name, or "synthetic phantom"; never an absolute path
    synthetic: bool
    file_dates: tuple[str, str] | None  # earliest and latest file modification date
    flow: Flow
    variant: str  # the task's variant
    variant_left_out: Sequence[str] = ()  # source labels this variant does not train on
    copies_kept_apart: bool = False  # --keep-duplicates
    group_key: str | None = None  # what a group is (patient_id, lesion_id); None: none given
    backbones: Mapping[str, str] = field(default_factory=dict)  # member -> backbone
    preprocessing: str = ""  # grayscale, CLAHE, ... (Preprocessing.key())
    dicom_window: str = "file"
    dicom_frame: int = -1
    subgroups: Sequence[str] = ()  # recorded `subgroup_<name>` columns
    externals: Mapping[str, str] = field(default_factory=dict)  # site -> headline figure


def externals_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The external evaluations a model version carries: `external.<site>` tags."""
    prefix = keys.version_external_tag("")
    return {k[len(prefix):]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}


def _stage(s: Stage) -> str:
    classes = ", ".join(f"{c} {n}" for c, n in s.per_class.items())
    return f"{s.name} {s.images} ({classes}; {s.groups} groups)"


def _eligibility(c: ChecklistFacts) -> str:
    flow = c.flow
    lost = [f"{n} {why}" for why, n in flow.left_out.items() if why != COPY_LEFT_OUT]
    details = "; ".join(f"{d}: {n}" for d, n in flow.unreadable_details.items())
    text = (f"{flow.found.images} files found; left out before splitting: "
            + (", ".join(lost) if lost else "no missing or unreadable file")
            + (f" (decoder: {details})" if details else "")
            + f"; {flow.left_out.get(COPY_LEFT_OUT, 0)} copy(ies) left out because a copy sits "
              "in a held-out split")
    if c.variant_left_out:
        text += (f"; classes {', '.join(f'`{s}`' for s in c.variant_left_out)} left out by "
                 f"variant `{c.variant}` (not counted in the records)")
    return text + "."


def _validation(c: ChecklistFacts, held: str) -> str:
    flow = c.flow
    if flow.used.groups == flow.used.images:
        grouped = "each image its own group" + ("" if c.group_key else
                                                " (the data set names no patients)")
    elif c.group_key is None:
        grouped = (f"{flow.used.groups} groups for {flow.used.images} images: copies grouped, "
                   "otherwise each image its own group")
    else:
        grouped = (f"grouped by `{c.group_key}`: {flow.used.groups} groups for "
                   f"{flow.used.images} images, a group never in two splits")
    scheme = (f"{len(flow.folds)}-fold cross-validation outside the test split, choices made "
              f"on {held} predictions" if flow.folds else
              f"holdout: choices made on {held} predictions")
    return f"{scheme}; {grouped}; the test split predicted once, after every choice."


def _dates(c: ChecklistFacts) -> str:
    if c.file_dates is None:
        return "not known"
    first, last = c.file_dates
    return ((f"{first} to {last}" if first != last else f"{first} (every file)")
            + " (file modification times, not acquisition dates"
            + ("; a phantom's are when it was generated" if c.synthetic else "") + ")")


def checklist_lines(card, c: ChecklistFacts) -> list[str]:
    """The checklist section of the card (`card` is its `CardFacts`)."""
    spec, flow = card.spec, c.flow
    members = "; ".join(f"`{m}` ({c.backbones.get(m, 'backbone not recorded')}, {r} px, "
                        f"weight {w:.3f})" for m, w, r, _ in card.members)
    metric = card.test.get(card.metric)
    calibration = ", ".join(f"{k} {card.test[k].text()}" for k in ("ece", "ece_calibrated")
                            if k in card.test)
    window = (f"DICOM window `{c.dicom_window}`"
              + (f", frame {c.dicom_frame}" if c.dicom_frame >= 0 else ", multi-frame files refused")
              + " (no effect on other formats)")
    externals = ("; ".join(f"{site}: {v}" for site, v in c.externals.items()) if c.externals
                 else "none yet (each external evaluation adds an `external.<site>` tag and a "
                      "line at the end of this card)")
    positive = f"; positive class `{spec.positive_class}`" if spec.positive_class else ""
    items = [
        ("Data source", c.source),
        ("Date range of the files", _dates(c)),
        ("Eligibility", _eligibility(c)),
        ("Outcome", f"{', '.join(f'`{k}`' for k in spec.classes)}{positive}"),
        ("Sample size per split and class", "; ".join(_stage(s) for s in flow.splits)
         + (" | folds: " + "; ".join(_stage(s) for s in flow.folds) if flow.folds else "")),
        ("Missing data", "images are used whole or left out (listed in the sweep run's "
                         "unreadable.csv); nothing is imputed"),
        ("Duplicates", f"{flow.duplicate_pairs} pair(s) of exact or near copies; "
         + ("kept apart (--keep-duplicates): test figures can be inflated" if c.copies_kept_apart
            else "each pair shares a group, so no split separates them")),
        ("Validation", _validation(c, spec.chosen_on)),
        ("Model", f"{len(card.members)} member(s): {members}; TTA policy `{card.tta_policy}` "
                  f"({card.tta_transforms} views per image)"),
        ("Preprocessing", f"`{c.preprocessing}`; {window}"),
        ("Performance", f"test {card.metric} {metric.text()} (with its 95% group-aware "
                        "bootstrap interval where one is sound; every figure under "
                        "Performance)" if metric else "under Performance"),
        ("Calibration", f"temperature scaling fitted on {spec.chosen_on} predictions"
         + (f"; test {calibration}" if calibration else "")),
        ("Subgroups", (f"recorded {', '.join(f'`{s}`' for s in c.subgroups)}: figures per "
                       "value in report.html") if c.subgroups else
         "none recorded (the sweep's --subgroup)"),
        ("External validation", externals),
    ]
    return ([HEADING, "", "Filled from what this run recorded; the last items only the authors "
             "can state.", ""]
            + [f"- **{name}**: {value}" for name, value in items]
            + [f"- **{name}**: {TO_BE_STATED}" for name in PERSON_ITEMS] + [""])
