"""Skin lesions, benign vs malignant (HAM10000).

Malignant = melanoma, basal cell carcinoma, actinic keratosis / Bowen's (mel, bcc, akiec).
Splits are grouped by `lesion_id`: HAM10000 holds several images of one lesion, and a lesion in
both train and test would leak.
"""
from __future__ import annotations

from tasks.base import Task

DX_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MALIGNANT = ("akiec", "bcc", "mel")

BINARY = Task(
    name="skin",
    variant="binary",
    title="Skin lesion (HAM10000): benign vs malignant",
    layout="ham10000",
    classes=("benign", "malignant"),
    source_labels=DX_CODES,
    label_map={dx: ("malignant" if dx in MALIGNANT else "benign") for dx in DX_CODES},
    positive_class="malignant",
    source_channels=3,
    resolutions=(224, 256),
    metric="pr_auc",
    group_key="lesion_id",
    tta_kinds=("hflip", "vflip", "rotate", "brightness"),  # dermoscopy has no up or left
    loss="class_weighted",  # malignant pos_weight about 4.1
    synthetic_note="a dark irregular, multi-coloured lesion for malignant codes; round and even for benign",
)

VARIANTS = {"binary": BINARY}
DEFAULT_VARIANT = "binary"
