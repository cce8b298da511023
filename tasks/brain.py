"""Brain tumour MRI (Kaggle Brain Tumor MRI Dataset).

Three tumour classes by default, as the reference recipe trains them (test split 300/306/300);
the `4class` variant keeps the data set's `notumor` class.
"""
from __future__ import annotations

from dataclasses import replace

from tasks.base import Preprocessing, Task

SOURCE_LABELS = ("glioma", "meningioma", "notumor", "pituitary")
ALIASES = {  # the older release of the same data set
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "no_tumor": "notumor",
    "pituitary_tumor": "pituitary",
}

THREE_CLASS = Task(
    name="brain",
    variant="3class",
    title="Brain tumour MRI: glioma / meningioma / pituitary",
    layout="brain_mri",
    classes=("glioma", "meningioma", "pituitary"),
    source_labels=SOURCE_LABELS,
    label_map={"glioma": "glioma", "meningioma": "meningioma", "notumor": None,
               "pituitary": "pituitary"},
    label_aliases=ALIASES,
    source_channels=1,
    resolutions=(128, 224),
    metric="accuracy",
    group_key=None,  # the Kaggle release carries no patient ids
    preprocessing=Preprocessing(grayscale=True),
    tta_kinds=("hflip", "vflip", "rotate", "brightness"),  # the 17-way set uses all
    loss="cross_entropy",
    synthetic_note="a bright lesion whose position and shape depend on the tumour type",
)

FOUR_CLASS = replace(
    THREE_CLASS,
    variant="4class",
    title="Brain tumour MRI: glioma / meningioma / no tumour / pituitary",
    classes=SOURCE_LABELS,
    label_map={s: s for s in SOURCE_LABELS},
)

VARIANTS = {"3class": THREE_CLASS, "4class": FOUR_CLASS}
DEFAULT_VARIANT = "3class"
