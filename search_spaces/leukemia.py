"""ALL blood-smear search.

The reference recipe trains with focal loss (gamma 2, the task record's) and selects on balanced
accuracy: the Benign class is the small one. Class weighting is the other remedy and cross entropy
the control. Cells have no orientation, so the stronger augmentation presets are searched.
"""
from __future__ import annotations

from ray import tune

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("focal", "class_weighted", "cross_entropy"),
    gpu={"augment": tune.choice(["medium", "heavy"])},
    note="reference recipe: focal loss, selected on balanced accuracy",
)
