"""Multi-head search (shape, texture, size from one image).

The reference recipe trains with MixUp (labels mixed per head, the size interpolated with the
same λ), label smoothing 0.1, cosine decay to 10% of the learning rate, a frequency-domain second
stream and 3-seed ensembles. Here MixUp and the frequency stream are searched rather than
assumed, and so is the weight of the measurement's loss against the two classifications; seeds
of the finalists are the ensemble's `--replicates`. The classes are balanced: cross entropy, or
focal.
"""
from __future__ import annotations

from ray import tune

from search_spaces._common import TaskSpace

_FREQUENCY = tune.choice([False, True])
# the measurements' loss against the classifications' (any CSV's regression heads alike)
_REGRESSION_WEIGHT = tune.choice(["", "regression=0.5", "regression=2"])

SPACE = TaskSpace(
    losses=("cross_entropy", "focal"),
    gpu={"frequency_stream": _FREQUENCY, "head_weights": _REGRESSION_WEIGHT,
         "label_smoothing": tune.choice([0.0, 0.1])},
    cpu={"frequency_stream": _FREQUENCY, "mixup_alpha": tune.choice([0.0, 0.2]),
         "phantom_per_class": 60},
    smoke={"frequency_stream": _FREQUENCY},
    note="reference recipe: MixUp per head, label smoothing 0.1, cosine decay, FFT stream",
)
