"""A small multi-task set: one image, several answers (two classifications and a measurement).

The recipe predicts a 10-class and a 32-class label and a continuous target from the same image,
with MixUp per head, label smoothing 0.1, cosine decay and 3-seed ensembles. The data is a CSV
(`labels.csv`: path, one column per head, optional group and split); your own CSV with other
heads reads through the same reader, which declares its heads from the columns.
"""
from __future__ import annotations

from dataclasses import replace

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

# Your own labels.csv: every column but path, group and split is a head, its kind declared in
# the header (`grade:classification`, `volume:regression[ml]`) or read from the values
# (`orchestrator.data.readers.multihead_csv`). The reader returns `with_heads(...)` of this.
CSV = replace(
    MULTIHEAD,
    variant="csv",
    title="Your own multi-head CSV (path, one column per head, optional group and split)",
    classes=(),
    source_labels=(),
    label_map={},
    heads=(),
    resolutions=(224,),
)

VARIANTS = {"default": MULTIHEAD, "csv": CSV}
DEFAULT_VARIANT = "default"
