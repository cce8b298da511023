"""How report.html shows the data's flow (`flow.py`), each split's characteristics and the
failure gallery. Light: no plotting, no models; the diagram is HTML boxes, so it reads in any
browser and in the MLflow artifact view, and its numbers can be copied."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from orchestrator.clinical.flow import Flow, Stage
from orchestrator.clinical.html import Section

FLOW_HEADING = "Participant flow"
CHARACTERISTICS_HEADING = "Characteristics of each split"
GALLERY_HEADING = "Failure gallery: the most confident test errors"


def _box(s: Stage, title: str | None = None) -> str:
    classes = "<br>".join(f"{html.escape(c)}: {n}" for c, n in s.per_class.items())
    return (f"<div class='flow-box'><b>{html.escape(title or s.name)}</b><br>{s.images} images, "
            f"{s.groups} groups<br><span class='note'>{classes}</span></div>")


def _row(stages: Sequence[Stage]) -> str:
    return "<div class='flow-row'>" + "".join(_box(s) for s in stages) + "</div>"


def _left_out_box(flow: Flow) -> str:
    if not flow.left_out:
        return "<div class='flow-box flow-out'><b>Left out</b><br>none</div>"
    reasons = "<br>".join(f"{html.escape(why)}: {n}" for why, n in flow.left_out.items())
    details = "".join(f"<br><span class='note'>unreadable, {html.escape(d)}: {n}</span>"
                      for d, n in flow.unreadable_details.items())
    return (f"<div class='flow-box flow-out'><b>Left out: {flow.left_out_total}</b><br>"
            f"{reasons}{details}</div>")


def flow_html(flow: Flow, copies_kept_apart: bool = False) -> str:
    """Found -> left out (beside) -> used -> the splits -> the folds, each box counted per
    class and group."""
    copies = ("copies kept apart (--keep-duplicates): they may straddle splits"
              if copies_kept_apart else "copies share a group, kept in one split")
    arrow = "<div class='flow-arrow'>&#8595;</div>"
    parts = ["<div class='flow'>",
             f"<div class='flow-row'>{_box(flow.found, 'Files found')}"
             f"<div class='flow-side'>&#8594;</div>{_left_out_box(flow)}</div>", arrow,
             f"<div class='flow-row'>{_box(flow.used, 'Used (split)')}"
             f"<div class='flow-side'></div><div class='flow-box flow-out'>"
             f"<b>Duplicate pairs: {flow.duplicate_pairs}</b><br>"
             f"<span class='note'>{copies}</span></div></div>",
             arrow, _row(flow.splits)]
    if flow.folds:
        parts += [arrow, "<p class='note'>Cross-validation folds (outside the test split):</p>",
                  _row(flow.folds)]
    return "\n".join(parts + ["</div>"])


def flow_section(flow: Flow, copies_kept_apart: bool = False) -> Section:
    groups = ("groups are patients or lesions where the data names them, else one image each")
    return Section(FLOW_HEADING,
                   [f"Every file the data folder listed, what was left out before splitting and "
                    f"why, and where the rest went ({groups}). Counted from the sweep's "
                    "recorded manifest.csv, unreadable.csv, duplicates.csv and "
                    "duplicates_left_out.csv."], extra=[flow_html(flow, copies_kept_apart)])


def characteristics_section(table: pd.DataFrame) -> Section:
    note = ("Images, groups and class mix per split (count, share of the split)"
            + (", with each recorded subgroup's values" if any(
                c.split(" ")[0] not in ("split", "images", "groups", "class")
                for c in table.columns) else "")
            + ". A split whose mix differs from the others' gives figures that do not "
              "transfer to it.")
    return Section(CHARACTERISTICS_HEADING, [note], tables=[table])


def gallery_section(figure: Path | None, shown: int, member: str) -> Section:
    if figure is None:
        return Section(GALLERY_HEADING, ["The ensemble made no error on the test split."])
    return Section(GALLERY_HEADING,
                   [f"The {shown} test images the ensemble got wrong with the highest calibrated "
                    f"confidence, worst first, each with the Grad-CAM of the member with the "
                    f"largest weight ({member}) for the class the ensemble decided. Confident errors are what "
                    "referral does not catch: look for a shared cause (a marker, a border, a "
                    "label error)."], figures=[figure])
