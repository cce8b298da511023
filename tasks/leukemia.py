"""Acute lymphoblastic leukaemia blood smears (Blood Cell Cancer [ALL]).

Four classes (Benign and the malignant Early Pre-B, Pre-B, Pro-B) by default; the `binary`
variant is benign vs ALL.
"""
from __future__ import annotations

from dataclasses import replace

from tasks.base import Task

SOURCE_LABELS = ("Benign", "Early", "Pre", "Pro")
ALIASES = {
    "early pre-b": "Early",
    "[malignant] early pre-b": "Early",
    "pre-b": "Pre",
    "[malignant] pre-b": "Pre",
    "pro-b": "Pro",
    "[malignant] pro-b": "Pro",
    "[benign] benign": "Benign",
    "hem": "Benign",
}

FOUR_CLASS = Task(
    name="leukemia",
    variant="4class",
    title="ALL blood smear: Benign / Early Pre-B / Pre-B / Pro-B",
    layout="blood_cell_all",
    classes=SOURCE_LABELS,
    source_labels=SOURCE_LABELS,
    label_map={s: s for s in SOURCE_LABELS},
    label_aliases=ALIASES,
    source_channels=3,
    resolutions=(224, 256),
    metric="balanced_accuracy",
    group_key="patient_id",  # used where file names carry one; else stratified by image
    tta_kinds=("hflip", "vflip", "rotate", "brightness"),  # cells have no orientation
    loss="focal",  # Benign is the small class
    synthetic_note="cell nucleus size, count and texture depend on the subtype",
)

BINARY = replace(
    FOUR_CLASS,
    variant="binary",
    title="ALL blood smear: benign vs ALL",
    classes=("Benign", "ALL"),
    label_map={"Benign": "Benign", "Early": "ALL", "Pre": "ALL", "Pro": "ALL"},
    positive_class="ALL",
)

VARIANTS = {"4class": FOUR_CLASS, "binary": BINARY}
DEFAULT_VARIANT = "4class"
