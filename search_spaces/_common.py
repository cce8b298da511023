"""The shared fragments of every task's search space, and the `Profile` record they build.

A task module declares only what differs (its loss choices, an augmentation range, a batch-size
cap); everything else is here, once. Facts that a task record already holds (resolutions,
default loss, focal gamma) are read from it, never restated.

Every value a space can take is checked against `TrialConfig` (so against the backbone,
schedule, augmentation, loss and task registries, none of which imports TensorFlow) when a
profile is built, and `check_space` does the same for a user's overrides before Ray starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ray import tune

from orchestrator.train.config import TrialConfig
from orchestrator.errors import ConfigError
from orchestrator.train.schedules import SCHEDULES
from tasks import get_task

PROFILES = ("smoke", "cpu", "gpu")

ALL_SCHEDULES = tuple(SCHEDULES)
# The backbones of the brain MRI recipe's comparison (MobileNetV3-Small is for quick CPU runs).
GPU_BACKBONES = ("baseline_cnn", "resnet50", "densenet121", "efficientnetb0")
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialConfig))


@dataclass(frozen=True)
class Profile:
    """One named search: the Tune space plus the budget Tune and ASHA run it with.

    `num_samples` is Tune's: random draws per grid point, so a space with a grid runs
    `trials` = num_samples x grid size trials. `max_epochs` is ASHA's max_t and equals the
    space's `epochs` constant.
    """

    name: str
    space: dict[str, Any]
    num_samples: int
    max_epochs: int
    grace_period: int
    cpus_per_trial: float
    gpus_per_trial: float
    description: str
    # The second stage: the cv_top best configurations retrained on cv_folds grouped,
    # stratified folds of every non-test image; 0 folds keeps the holdout path only.
    cv_folds: int = 0
    cv_top: int = 0
    # Seeds of each finalist retrained on the folds, each one more ensemble candidate (the
    # recipes' "3-seed ensembles"); 1: the finalist's own seed only.
    replicates: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.space) - _FIELDS)
        if unknown:
            raise ConfigError(f"profile {self.name}: {unknown} are not trial config fields")
        if self.num_samples < 1 or self.max_epochs < 1:
            raise ConfigError(f"profile {self.name}: num_samples and max_epochs must be >= 1, "
                              f"got {self.num_samples}, {self.max_epochs}")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise ConfigError(f"profile {self.name}: grace_period {self.grace_period} must be in "
                              f"[1, max_epochs={self.max_epochs}]")
        if self.space.get("epochs") != self.max_epochs:
            raise ConfigError(f"profile {self.name}: the space's epochs "
                              f"{self.space.get('epochs')!r} must be the constant max_epochs "
                              f"{self.max_epochs} (ASHA's max_t)")
        if not self.cpus_per_trial > 0 or self.gpus_per_trial < 0:
            raise ConfigError(f"profile {self.name}: cpus_per_trial must be > 0 and "
                              f"gpus_per_trial >= 0, got {self.cpus_per_trial}, "
                              f"{self.gpus_per_trial}")
        if self.cv_folds == 1 or not 0 <= self.cv_folds <= 20 or self.cv_top < 0 or (
                self.cv_folds and self.cv_top < 1):
            raise ConfigError(f"profile {self.name}: cv_folds must be 0 or 2..20 and cv_top >= 1 "
                              f"with folds, got {self.cv_folds}, {self.cv_top}")
        if not 1 <= self.replicates <= 20:
            raise ConfigError(f"profile {self.name}: replicates must be in 1..20, got "
                              f"{self.replicates}")
        if self.replicates > 1 and not self.cv_folds:
            raise ConfigError(f"profile {self.name}: {self.replicates} replicates need the "
                              "cross-validation stage (cv_folds >= 2): the extra seeds are "
                              "retrained on its folds, so each one has out-of-fold predictions "
                              "to be chosen on")
        check_space(self.space, f"profile {self.name}")

    @property
    def grid_size(self) -> int:
        """How many grid points the space has (1 without a grid)."""
        size = 1
        for value in self.space.values():
            size *= len(grid_values(value)) if is_grid(value) else 1
        return size

    @property
    def trials(self) -> int:
        """How many trials Tune starts for this profile."""
        return self.num_samples * self.grid_size


@dataclass(frozen=True)
class TaskSpace:
    """What one task's search differs in; `losses` puts the task's default loss first."""

    losses: tuple[str, ...]  # gpu loss choices
    gpu: Mapping[str, Any] = field(default_factory=dict)  # entries that replace the shared ones
    cpu: Mapping[str, Any] = field(default_factory=dict)
    smoke: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # one line for the profiles' descriptions

    def __post_init__(self) -> None:
        for name in PROFILES:
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def extra(self, profile: str) -> Mapping[str, Any]:
        return getattr(self, profile)


def is_grid(value: Any) -> bool:
    """`tune.grid_search([...])` (a dict) or a categorical domain with `.grid()`."""
    if isinstance(value, dict):
        return set(value) == {"grid_search"}
    return isinstance(value, tune.search.sample.Domain) and value.is_grid()


def grid_values(value: Any) -> list[Any]:
    return list(value["grid_search"]) if isinstance(value, dict) else list(value.categories)


def is_dimension(value: Any) -> bool:
    """A searched entry (a Tune domain or a grid), as opposed to a constant."""
    return is_grid(value) or isinstance(value, tune.search.sample.Domain)


def discrete_values(value: Any, key: str) -> list[Any]:
    """Every value a constant, choice or grid entry can take; a range is refused, naming `key`
    (a resolution, say, is decoded per value before any trial runs)."""
    if is_dimension(value) and not (is_grid(value)
                                    or isinstance(value, tune.search.sample.Categorical)):
        raise ConfigError(f"{key} must be a constant, a choice or a grid in a search space")
    return candidate_values(value)


def candidate_values(value: Any) -> list[Any]:
    """The values of one search dimension worth checking: a constant, every choice or grid
    point, a numeric range's two ends; [] for `sample_from` (its values exist only per trial)."""
    if is_grid(value):
        return grid_values(value)
    if not isinstance(value, tune.search.sample.Domain):
        return [value]
    if isinstance(value, tune.search.sample.Categorical):
        return list(value.categories)
    if isinstance(value, tune.search.sample.Function):
        return []
    if isinstance(value, tune.search.sample.Integer):
        return [value.lower, value.upper - 1]  # Tune's integer upper bound is exclusive
    return [value.lower, value.upper]


def check_space(space: Mapping[str, Any], where: str) -> None:
    """Refuse a key that is no trial config field, or any value a trial could not run with,
    naming `where` it came from, the field, the value and (for names) the valid ones."""
    unknown = sorted(set(space) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not trial config fields; valid fields: "
                          f"{', '.join(sorted(_FIELDS))}")
    constants = {k: v for k, v in space.items() if not is_dimension(v)}
    try:
        TrialConfig.from_dict(constants)
        for key in space.keys() - constants.keys():
            for candidate in candidate_values(space[key]):
                TrialConfig.from_dict({**constants, key: candidate})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------- profiles
def _smoke(task_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tests of the sweep machinery (ASHA, checkpoints, the ensemble), not of learning."""
    task = get_task(task_key)
    space = {
        "task": task_key,
        "backbone": "baseline_cnn",
        "weights": "none",  # nothing to download, ever
        "resolution": 32,
        "schedule": "full",  # one phase: one compile per trial
        "epochs": 2,
        "batch_size": 8,
        "lr_multiplier": tune.loguniform(3.0, 30.0),
        "loss": task.loss,
        "focal_gamma": task.focal_gamma,
        "label_smoothing": tune.choice([0.0, 0.1]),
        "augment": "none",
        "phantom_per_class": 16,
        "mixed_precision": "off",
    }
    budget = dict(num_samples=2, max_epochs=2, grace_period=1, cpus_per_trial=1.0,
                  gpus_per_trial=0.0, cv_folds=2, cv_top=2)
    return space, budget


def _cpu(task_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The embedded default without GPUs: the brain sweep, ensemble included, must fit in 10 min
    on 2 cores. Measured on the brain phantom (100/class, 64 px, 2 cores): an 8-epoch trial of
    the baseline CNN takes 20-27 s plus ~8 s to start; two at a time (one thread each) a pair
    takes ~45 s, so 8 trials need ~3 of the ~6 minutes left for training."""
    task = get_task(task_key)
    space = {
        "task": task_key,
        # The baseline CNN only: MobileNetV3Small from random init (no ImageNet download here)
        # stays at chance on the phantom for 8 epochs: its BatchNorm statistics do not settle.
        "backbone": "baseline_cnn",
        "weights": "none",
        "resolution": 64,
        # Compiling each phase costs seconds on CPU, so one-phase `full` or `three_phase` only
        # (about 6 s more per trial). The baseline CNN is not pretrained: every schedule trains
        # all of it and differs only in learning rates: full 1e-4 cosine, three_phase 1e-3
        # then 1e-4; with the multiplier below they start between 1e-4 and 1e-2. Both ends of
        # both schedules reached 0.78-0.83 validation accuracy on the phantom in 8 epochs.
        "schedule": tune.choice(["full", "three_phase"]),
        "epochs": 8,
        "batch_size": 16,
        "lr_multiplier": tune.loguniform(1.0, 10.0),
        "loss": task.loss,
        "focal_gamma": task.focal_gamma,
        "label_smoothing": tune.choice([0.0, 0.1]),
        # Light at most: on the phantoms a lesion's position can be the class (brain).
        "augment": tune.choice(["none", "light"]),
        "phantom_per_class": 100,
        "mixed_precision": "off",
    }
    # One CPU per trial: two single-threaded trials at once use 2 cores better than one trial
    # on two threads (the input pipeline and the compile are mostly serial).
    # Grace 4: after 2 epochs nearly every trial is still at chance on the phantom, so an
    # earlier rung would stop trials on noise.
    budget = dict(num_samples=8, max_epochs=8, grace_period=4, cpus_per_trial=1.0,
                  gpus_per_trial=0.0, cv_folds=3, cv_top=2)
    return space, budget


def _gpu(task_key: str, losses: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The real search on real data: pretrained backbones at the task's own resolutions."""
    task = get_task(task_key)
    space = {
        "task": task_key,
        "backbone": tune.choice(list(GPU_BACKBONES)),
        "weights": "auto",  # ImageNet for the pretrained backbones, none for the baseline CNN
        # A grid, not a choice: every documented resolution gets the same number of trials and
        # each is decoded and cached once.
        "resolution": tune.grid_search(list(task.resolutions)),
        "schedule": tune.choice(list(ALL_SCHEDULES)),
        "epochs": 30,
        "batch_size": tune.choice([16, 32, 64]),
        "lr_multiplier": tune.loguniform(0.3, 3.0),
        "loss": tune.choice(list(losses)),
        "focal_gamma": task.focal_gamma,
        "label_smoothing": tune.choice([0.0, 0.05, 0.1]),
        "mixup_alpha": tune.choice([0.0, 0.2, 0.4]),
        "augment": tune.choice(["light", "medium", "heavy"]),
        "dropout": tune.choice([0.3, 0.5]),
        "phantom_per_class": 200,  # used only without --data-dir
        "mixed_precision": "auto",
    }
    # About 32 trials whatever the grid: 16 per resolution for two, 32 for one.
    grid = len(task.resolutions)
    budget = dict(num_samples=max(1, 32 // grid), max_epochs=30, grace_period=3,
                  cpus_per_trial=4.0, gpus_per_trial=1.0, cv_folds=5, cv_top=4)
    return space, budget


_PURPOSES = {
    "smoke": "tests of the sweep machinery only: the baseline CNN, 2 epochs at 32 px on a tiny "
             "phantom",
    "cpu": "no GPU: the baseline CNN from scratch at 64 px, sized for 2 cores",
    "gpu": "the real search: pretrained backbones at {resolutions} px, every unfreezing "
           "schedule, stopped early by ASHA",
}


def build_profile(task_key: str, profile: str, spec: TaskSpace) -> Profile:
    """The shared fragment for `profile`, with the task module's entries laid over it."""
    if profile == "smoke":
        space, budget = _smoke(task_key)
    elif profile == "cpu":
        space, budget = _cpu(task_key)
    elif profile == "gpu":
        space, budget = _gpu(task_key, spec.losses)
    else:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    space.update(spec.extra(profile))
    purpose = _PURPOSES[profile].format(
        resolutions="/".join(map(str, get_task(task_key).resolutions)))
    description = f"{task_key}: {purpose}" + (f"; {spec.note}" if spec.note else "")
    return Profile(name=profile, space=space, description=description, **budget)
