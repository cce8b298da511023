"""What a model's outputs train on, chosen once per task (`training_outputs`): the one
softmax of a single-label task, or a named output per head. The trainer asks it for the
targets' scales, the class weights, the batches and the loss, and never asks which it is.

Kept apart from `trainer.py` so the task's shape is read in one place; the Keras outputs
themselves are built by `models.classifier.build_model`."""
from __future__ import annotations

import numpy as np

from orchestrator.models.heads import TargetScale, parse_head_weights, target_scales
from orchestrator.train.pipeline import (balanced_class_weights, head_class_weights, make_loss,
                                         multihead_dataset, multihead_losses, training_dataset)
from tasks.base import Task


class OneSoftmax:
    """A single-label task: (N,) class indices, one softmax, one loss."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def scales(self, y_train: np.ndarray) -> dict[str, TargetScale]:
        return {}

    def class_weights(self, y_train: np.ndarray):
        return balanced_class_weights(y_train, self.task.num_classes)

    def dataset(self, x: np.ndarray, y: np.ndarray, **common):
        return training_dataset(x, y, num_classes=self.task.num_classes, **common)

    def loss(self, loss_name: str, scales, head_weights: str, *, label_smoothing: float,
             focal_gamma: float):
        """(the loss, the outputs' loss weights: None)."""
        return make_loss(loss_name, label_smoothing=label_smoothing,
                         focal_gamma=focal_gamma), None

    def recorded_class_weights(self, weights) -> dict:
        return dict(zip(self.task.classes, map(float, weights)))

    def recorded_scales(self, scales) -> dict:
        return {}


class NamedHeads:
    """A multi-head task: (N, H) targets, an output per head, a loss per head weighted."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def scales(self, y_train: np.ndarray) -> dict[str, TargetScale]:
        return target_scales(y_train, self.task)

    def class_weights(self, y_train: np.ndarray):
        return head_class_weights(y_train, self.task.heads)

    def dataset(self, x: np.ndarray, y: np.ndarray, **common):
        return multihead_dataset(x, y, heads=self.task.heads, **common)

    def loss(self, loss_name: str, scales, head_weights: str, *, label_smoothing: float,
             focal_gamma: float):
        return multihead_losses(self.task.heads, scales,
                                parse_head_weights(head_weights, self.task), loss_name,
                                label_smoothing=label_smoothing, focal_gamma=focal_gamma)

    def recorded_class_weights(self, weights) -> dict:
        return {name: dict(zip(self.task.head(name).classes, map(float, w)))
                for name, w in weights.items()}

    def recorded_scales(self, scales) -> dict:
        """What `trial_inputs.json` records of the regression heads' scales."""
        return {"target_scales": {k: v.__dict__ for k, v in scales.items()}}


def training_outputs(task: Task) -> OneSoftmax | NamedHeads:
    """The boundary where a task's shape decides how its model's outputs train."""
    return NamedHeads(task) if task.is_multihead else OneSoftmax(task)
