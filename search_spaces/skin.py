"""HAM10000 benign vs malignant search.

The reference recipe weights the malignant class (pos_weight about 4.1: roughly one malignant
lesion in five) and selects on PR-AUC, the task's metric, because ROC-AUC flatters a rare positive
class. Focal loss is the other answer to the imbalance; plain cross entropy stays as the control,
since PR-AUC ranks probabilities and does not need them re-weighted. Dermoscopy has no up or left,
so the stronger augmentation presets (all flips and rotations allowed) are the ones searched.
"""
from __future__ import annotations

from ray import tune

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("class_weighted", "focal", "cross_entropy"),
    gpu={"augment": tune.choice(["medium", "heavy"])},
    note="reference recipe: malignant class weighted (pos_weight ~4.1), selected on PR-AUC",
)
