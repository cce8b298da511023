"""Search-space registry: per task (CLI word = registry key = module name), one `Profile` per
named budget. A sampled config is a complete `TrialConfig` dict and runs as it is.

`sample_configs` and `space_to_json` work on the Tune domains without starting Ray, so tests,
`--dry-run` and the MLflow artifact see exactly what Tune would search.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
from typing import Any, Mapping

import numpy as np
from ray import tune
from ray.tune.search import sample as _sample

from orchestrator.errors import ConfigError
from search_spaces._common import (PROFILES, Profile, TaskSpace, build_profile, check_space,
                                   discrete_values, grid_values, is_dimension, is_grid)
from tasks import get_task, task_names


def _task_space(name: str) -> TaskSpace:
    """`search_spaces/<task>.py`'s SPACE: one module per registered task, named alike."""
    try:
        return importlib.import_module(f"search_spaces.{name}").SPACE
    except (ModuleNotFoundError, AttributeError) as err:
        raise ConfigError(f"task {name!r} is registered in tasks/ but search_spaces/{name}.py "
                          f"defines no SPACE ({err})") from None


SPACES: dict[str, TaskSpace] = {name: _task_space(name) for name in task_names()}


def get_profile(task_name: str, profile: str) -> Profile:
    """The profile for a task; `task_name` may name a variant (`brain/4class`), which then is
    the space's `task` value."""
    name, _, variant = task_name.partition("/")
    if name not in SPACES:
        raise ConfigError(f"no search space for task {name!r}; valid tasks: {', '.join(SPACES)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    task_key = f"{name}/{variant}" if variant else name
    get_task(task_key)  # an unknown variant fails here, listing the valid ones
    return build_profile(task_key, profile, SPACES[name])


def choose_profile(resources: Mapping[str, float]) -> str:
    """"gpu" when the cluster (`ray.cluster_resources()`) has at least one whole GPU, else "cpu"."""
    return "gpu" if float(resources.get("GPU", 0) or 0) >= 1 else "cpu"


def with_overrides(
    profile: Profile,
    num_samples: int | None = None,
    max_epochs: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    cv_folds: int | None = None,
    cv_top: int | None = None,
    replicates: int | None = None,
) -> Profile:
    """A copy with the CLI's budget overrides; `max_epochs` also sets the space's `epochs` and
    lowers `grace_period` to it when needed (ASHA needs grace <= max_t)."""
    changes: dict[str, Any] = {"space": dict(profile.space)}
    if num_samples is not None:
        changes["num_samples"] = int(num_samples)
    if max_epochs is not None:
        changes["max_epochs"] = int(max_epochs)
        changes["space"]["epochs"] = int(max_epochs)
        changes["grace_period"] = max(1, min(profile.grace_period, int(max_epochs)))
    if cpus_per_trial is not None:
        changes["cpus_per_trial"] = float(cpus_per_trial)
    if gpus_per_trial is not None:
        changes["gpus_per_trial"] = float(gpus_per_trial)
    if cv_folds is not None:
        changes["cv_folds"] = int(cv_folds)
    if cv_top is not None:
        changes["cv_top"] = int(cv_top)
    if replicates is not None:
        changes["replicates"] = int(replicates)
    return dataclasses.replace(profile, **changes)


def overrides_space(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Plain override values (the CLI's `--set KEY=VALUE`, JSON-friendly) as space entries: a
    list becomes a `tune.choice` over its items, anything else a constant."""
    return {key: tune.choice(list(value)) if isinstance(value, (list, tuple)) else value
            for key, value in overrides.items()}


def sample_configs(profile: Profile, n: int, seed: int) -> list[dict[str, Any]]:
    """n concrete configs drawn as Tune would, without Ray: grid entries cycle through their
    product (draw i takes grid point i mod size), other domains use their own `.sample()`."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    grid_keys = [k for k, v in profile.space.items() if is_grid(v)]
    points = list(itertools.product(*(grid_values(profile.space[k]) for k in grid_keys)))
    configs = []
    for i in range(n):
        grid = dict(zip(grid_keys, points[i % len(points)]))
        config: dict[str, Any] = {}
        deferred = []
        for key, value in profile.space.items():
            if key in grid:
                config[key] = grid[key]
            elif isinstance(value, _sample.Domain) and value.is_function():
                deferred.append(key)  # sample_from sees the rest of the config
            elif isinstance(value, _sample.Domain):
                config[key] = value.sample(random_state=rng)
            else:
                config[key] = copy.deepcopy(value)
        for key in deferred:
            config[key] = profile.space[key].sample(config=config, random_state=rng)
        configs.append({key: _plain(config[key]) for key in profile.space})
    return configs


def space_to_json(space: Mapping[str, Any]) -> dict[str, Any]:
    """Each entry as readable JSON: {"type": "choice", "categories": [...]}, {"type":
    "loguniform", "lower": .., "upper": ..}, {"type": "grid_search", "values": [...]},
    {"type": "constant", "value": ..}."""
    return {key: _describe(value) for key, value in space.items()}


def _describe(value: Any) -> dict[str, Any]:
    if is_grid(value):
        return {"type": "grid_search", "values": _plain(grid_values(value))}
    if not isinstance(value, _sample.Domain):
        return {"type": "constant", "value": _plain(value)}
    if isinstance(value, _sample.Categorical):
        return {"type": "choice", "categories": _plain(value.categories)}
    if isinstance(value, _sample.Function):
        return {"type": "sample_from", "function": getattr(value.func, "__qualname__",
                                                           repr(value.func))}
    sampler = value.get_sampler()
    extra: dict[str, Any] = {}
    prefix = ""
    if isinstance(sampler, _sample.Quantized):
        prefix, extra["q"] = "q", _plain(sampler.q)
        sampler = sampler.get_sampler()
    if isinstance(sampler, _sample.Normal):
        return {"type": prefix + "randn", "mean": sampler.mean, "sd": sampler.sd, **extra}
    is_int = isinstance(value, _sample.Integer)
    if isinstance(sampler, _sample.LogUniform):
        kind = "lograndint" if is_int else "loguniform"
    elif isinstance(sampler, _sample.Uniform):
        kind = "randint" if is_int else "uniform"
    else:
        kind = f"{type(value).__name__}/{sampler}"
    return {"type": prefix + kind, "lower": _plain(value.lower), "upper": _plain(value.upper),
            **extra}


def _plain(value: Any) -> Any:
    """Python scalars and lists: Tune domains may hand back numpy values and tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


__all__ = ["PROFILES", "Profile", "TaskSpace", "SPACES", "get_profile", "choose_profile",
           "with_overrides", "overrides_space", "check_space", "discrete_values", "is_dimension",
           "sample_configs", "space_to_json"]
