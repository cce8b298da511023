"""The user's own data: one sub-folder per class, or a CSV `path,label[,group][,split]`.

Classes are discovered from the data (`Task.with_classes`); the record here holds the defaults.
"""
from __future__ import annotations

from tasks.base import Task

GENERIC = Task(
    name="folder",
    variant="default",
    title="Your own images (one folder per class, or a CSV)",
    layout="folder",
    classes=(),
    source_labels=(),
    label_map={},
    source_channels=3,
    resolutions=(224,),
    metric="balanced_accuracy",
    group_key="group",  # the CSV's optional `group` column; folders give one group per image
    tta_kinds=("hflip", "rotate", "brightness"),
    loss="class_weighted",
    synthetic_note="three shape classes (disc, square, ring) on noisy backgrounds",
)

VARIANTS = {"default": GENERIC}
DEFAULT_VARIANT = "default"
