"""Paediatric chest X-ray pneumonia (chest_xray).

CLAHE (clip 2.0, 8x8 tiles) as in training, applied identically when serving. The shipped
16-image `val` is too small to select on: validation is re-split from train, grouped by the
patient id in the file name. Flips are not allowed at test time: a mirrored chest X-ray puts the
heart on the wrong side.
"""
from __future__ import annotations

from tasks.base import Preprocessing, Task

BINARY = Task(
    name="pneumonia",
    variant="binary",
    title="Chest X-ray: normal vs pneumonia",
    layout="chest_xray",
    classes=("NORMAL", "PNEUMONIA"),
    source_labels=("NORMAL", "PNEUMONIA"),
    label_map={"NORMAL": "NORMAL", "PNEUMONIA": "PNEUMONIA"},
    positive_class="PNEUMONIA",
    source_channels=1,
    resolutions=(224, 384),
    metric="roc_auc",
    group_key="patient_id",
    preprocessing=Preprocessing(grayscale=True, clahe=True, clahe_clip=2.0, clahe_tiles=8),
    tta_kinds=("rotate", "brightness"),
    loss="class_weighted",  # about 3 pneumonia to 1 normal
    synthetic_note="patchy bright opacities in the lung fields for pneumonia",
)

VARIANTS = {"binary": BINARY}
DEFAULT_VARIANT = "binary"
