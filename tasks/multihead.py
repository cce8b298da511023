"""A small multi-task set: one image, several answers (two classifications and a measurement).

The recipe predicts a 10-class and a 32-class label and a continuous target from the same image,
with MixUp per head, label smoothing 0.1, cosine decay and 3-seed ensembles. The data is a CSV
(`labels.csv`: path, one column per head, optional group and split); your own CSV with other
heads reads through the same reader, which declares its heads from the columns.
"""
from __future__ import annotations

from tasks.base import MULTIHEAD_METRIC, Head, Task

SHAPES = ("disc", "square", "triangle", "ring")
TEXTURES = ("smooth", "stripes", "dots")

HEADS = (
    Head("shape", "classification", classes=SHAPES),
    Head("texture", "classification", classes=TEXTURES),
    Head("size", "regression", unit="mm", loss="huber"),
)

MULTIHEAD = Task(
    name="multihead",
    variant="default",
    title="Multi-head: shape class, texture class and size from one image",
    layout="multihead_csv",
    classes=SHAPES,
    source_labels=SHAPES,
    label_map={s: s for s in SHAPES},
    source_channels=3,
    resolutions=(64, 128),
    metric=MULTIHEAD_METRIC,
    group_key="group",  # the CSV's optional `group` column; else one group per image
    tta_kinds=("hflip", "vflip", "rotate", "brightness"),
    loss="cross_entropy",
    label_smoothing=0.1,
    synthetic_note=("one object per image: its outline gives the shape class, its fill the "
                    "texture class, its diameter the size in mm"),
    heads=HEADS,
)

VARIANTS = {"default": MULTIHEAD}
DEFAULT_VARIANT = "default"
