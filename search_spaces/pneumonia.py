"""Paediatric chest X-ray search.

CLAHE (clip 2.0, 8x8) is part of the task's preprocessing already, so it is not searched. The
reference recipe uses `two_phase`: the head at 1e-3, then ResNet50's layers 100+ at 1e-5, and class
weights for the 3:1 pneumonia/normal imbalance. At 384 px a batch of 64 does not fit a 16 GB GPU
for ResNet50 or DenseNet121, hence the smaller batch sizes. Flips are stripped by the task's TTA
kinds (a mirrored chest puts the heart on the wrong side), whatever the preset.
"""
from __future__ import annotations

from ray import tune

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("class_weighted", "focal", "cross_entropy"),
    gpu={"batch_size": tune.choice([16, 32])},
    note="reference recipe: two_phase (layers 100+ at 1e-5), class weights, CLAHE in the task",
)
