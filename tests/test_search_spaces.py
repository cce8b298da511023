"""Search spaces: every task x variant x profile samples configs that train as they are.

Parametrized over the registries themselves, so a new task, variant or profile is covered (or
fails) without editing this file. No Ray cluster is started; no training runs here.
"""
from __future__ import annotations

import json

import pytest
from ray import tune

import search_spaces
from orchestrator.models.backbones import BACKBONES
from orchestrator.train.config import TrialConfig
from orchestrator.errors import ConfigError
from orchestrator.train.schedules import SCHEDULES
from search_spaces import (PROFILES, Profile, check_space, choose_profile, get_profile,
                           overrides_space, sample_configs, space_to_json, with_overrides)
from search_spaces._common import ALL_SCHEDULES, GPU_BACKBONES
from tasks import TASKS, get_task, task_names

DRAWS = 20
TASK_KEYS = [f"{name}/{variant}" for name, variants in TASKS.items() for variant in variants]
PLAIN_NAMES = list(TASKS)
# The resolutions the task docs name for the real search; written out so a change to a task
# record's `resolutions` has to be made here too, on purpose.
DOCUMENTED_GPU_RESOLUTIONS = {
    "brain": [128, 224],
    "skin": [224, 256],
    "leukemia": [224, 256],
    "pneumonia": [224, 384],
    "folder": [224],
    "multihead": [64, 128],
}


def test_registry_covers_every_task() -> None:
    assert list(search_spaces.SPACES) == task_names()
    assert PROFILES == ("smoke", "cpu", "gpu")


def test_the_gpu_search_names_registered_backbones_and_every_schedule() -> None:
    assert set(GPU_BACKBONES) <= set(BACKBONES)
    gpu = get_profile("brain", "gpu").space
    assert set(gpu["schedule"].categories) == set(SCHEDULES) == set(ALL_SCHEDULES)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("task_key", TASK_KEYS + PLAIN_NAMES)
def test_every_sample_is_a_runnable_trial_config(task_key: str, profile: str) -> None:
    prof = get_profile(task_key, profile)
    assert prof.name == profile
    assert prof.space["task"] == task_key
    assert prof.space["epochs"] == prof.max_epochs
    assert 1 <= prof.grace_period <= prof.max_epochs
    configs = sample_configs(prof, DRAWS, seed=0)
    assert len(configs) == DRAWS
    for values in configs:
        cfg = TrialConfig.from_dict(values)  # checks every name against its registry
        assert cfg.task == task_key
        assert cfg.epochs == prof.max_epochs
        assert get_task(cfg.task).key == get_task(task_key).key
        json.dumps(values)  # Tune and MLflow log them


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_samples_stay_inside_their_domains(name: str, profile: str) -> None:
    prof = get_profile(name, profile)
    described = space_to_json(prof.space)
    for values in sample_configs(prof, DRAWS, seed=3):
        for key, value in values.items():
            d = described[key]
            if d["type"] == "choice":
                assert value in d["categories"], key
            elif d["type"] == "grid_search":
                assert value in d["values"], key
            elif d["type"] in ("loguniform", "uniform"):
                assert d["lower"] <= value <= d["upper"], key
            else:
                assert d == {"type": "constant", "value": value}, key


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_gpu_profile_is_the_real_search(name: str) -> None:
    task = get_task(name)
    prof = get_profile(name, "gpu")
    space = space_to_json(prof.space)
    assert space["resolution"] == {"type": "grid_search",
                                   "values": DOCUMENTED_GPU_RESOLUTIONS[name]}
    assert list(task.resolutions) == DOCUMENTED_GPU_RESOLUTIONS[name]
    assert set(space["backbone"]["categories"]) == {"baseline_cnn", "resnet50", "densenet121",
                                                    "efficientnetb0"}
    assert set(space["schedule"]["categories"]) == set(SCHEDULES)
    assert space["loss"]["categories"][0] == task.loss  # the task's default leads
    assert space["lr_multiplier"]["type"] == "loguniform"
    assert prof.space["weights"] == "auto" and prof.space["mixed_precision"] == "auto"
    assert prof.gpus_per_trial >= 1
    seen = {c["resolution"] for c in sample_configs(prof, DRAWS, seed=1)}
    assert seen == set(task.resolutions)  # the grid is cycled, every point is drawn


@pytest.mark.parametrize("task_key", TASK_KEYS)
def test_smoke_profile_is_small(task_key: str) -> None:
    prof = get_profile(task_key, "smoke")
    assert 2 <= prof.trials <= 4
    assert prof.max_epochs <= 2
    assert prof.gpus_per_trial == 0
    for cfg in map(TrialConfig.from_dict, sample_configs(prof, DRAWS, seed=0)):
        assert 32 <= cfg.resolution <= 48
        assert cfg.backbone == "baseline_cnn" and cfg.weights == "none"
        assert cfg.batch_size <= 16 and cfg.phantom_per_class <= 20


@pytest.mark.parametrize("task_key", TASK_KEYS)
def test_cpu_profile_fits_two_cores(task_key: str) -> None:
    """Nothing that needs a download or a GPU; budget for the 10-minute embedded default."""
    prof = get_profile(task_key, "cpu")
    assert 6 <= prof.trials <= 8
    assert prof.max_epochs <= 10 and prof.gpus_per_trial == 0
    for cfg in map(TrialConfig.from_dict, sample_configs(prof, DRAWS, seed=0)):
        assert cfg.weights == "none"
        assert cfg.resolution == 64
        assert cfg.schedule in ("full", "three_phase")  # one compile per phase: few phases


def test_variant_goes_into_the_task_value() -> None:
    assert get_profile("brain/4class", "cpu").space["task"] == "brain/4class"
    assert get_profile("brain", "cpu").space["task"] == "brain"
    assert get_task(get_profile("leukemia/binary", "gpu").space["task"]).num_classes == 2


def test_profiles_are_fresh_copies() -> None:
    first = get_profile("brain", "cpu")
    first.space["resolution"] = 999
    assert get_profile("brain", "cpu").space["resolution"] == 64


@pytest.mark.parametrize("resources, expected", [
    ({"CPU": 2.0, "memory": 1e9}, "cpu"),
    ({"CPU": 16.0, "GPU": 1.0}, "gpu"),
    ({"CPU": 64.0, "GPU": 8.0, "accelerator_type:A100": 1.0}, "gpu"),
    ({"CPU": 8.0, "GPU": 0.0}, "cpu"),
    ({"CPU": 8.0, "GPU": 0.5}, "cpu"),  # less than one whole GPU cannot run a gpu trial
    ({}, "cpu"),
])
def test_choose_profile(resources: dict, expected: str) -> None:
    assert choose_profile(resources) == expected


def test_unknown_task_lists_valid_tasks() -> None:
    with pytest.raises(ConfigError) as err:
        get_profile("lung", "cpu")
    for name in task_names():
        assert name in str(err.value)


def test_unknown_variant_lists_valid_variants() -> None:
    with pytest.raises(ConfigError) as err:
        get_profile("brain/5class", "cpu")
    assert "3class" in str(err.value) and "4class" in str(err.value)


def test_unknown_profile_lists_valid_profiles() -> None:
    with pytest.raises(ConfigError) as err:
        get_profile("brain", "tpu")
    for name in PROFILES:
        assert name in str(err.value)


def test_overrides() -> None:
    base = get_profile("brain", "gpu")
    prof = with_overrides(base, num_samples=3, max_epochs=2, cpus_per_trial=2, gpus_per_trial=0.5)
    assert (prof.num_samples, prof.max_epochs, prof.cpus_per_trial, prof.gpus_per_trial) == (
        3, 2, 2.0, 0.5)
    assert prof.space["epochs"] == 2
    assert prof.grace_period == 2  # lowered from 3 to fit max_t
    assert prof.trials == 3 * 2  # two resolutions in the grid
    assert all(c["epochs"] == 2 for c in sample_configs(prof, 5, seed=0))
    assert base.space["epochs"] == 30 and base.max_epochs == 30  # the original is untouched
    assert with_overrides(base) == base
    longer = with_overrides(base, max_epochs=50)
    assert longer.grace_period == base.grace_period and longer.space["epochs"] == 50


@pytest.mark.parametrize("bad", [dict(num_samples=0), dict(max_epochs=0),
                                 dict(cpus_per_trial=0), dict(gpus_per_trial=-1)])
def test_bad_overrides_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        with_overrides(get_profile("brain", "cpu"), **bad)


def test_profile_refuses_fields_trial_config_does_not_know() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        Profile("x", {"epochs": 1, "learning_rate": 0.1}, 1, 1, 1, 1.0, 0.0, "")
    with pytest.raises(ConfigError, match="epochs"):
        Profile("x", {"epochs": 5}, 1, 4, 1, 1.0, 0.0, "")


@pytest.mark.parametrize("key,domain,needle", [
    ("backbone", tune.choice(["resnet50", "resnet5O"]), "unknown backbone 'resnet5O'"),
    ("schedule", tune.grid_search(["full", "one_phase"]), "unknown schedule 'one_phase'"),
    ("augment", "wild", "unknown augmentation 'wild'"),
    ("lr_multiplier", tune.loguniform(1e-6, 1.0), "lr_multiplier"),
    ("resolution", tune.randint(8, 64), "resolution: 8"),
])
def test_a_profile_with_a_value_no_trial_could_run_is_refused(key, domain, needle) -> None:
    """Every value a space can take is checked when the profile is built, not on a worker."""
    with pytest.raises(ConfigError, match=needle) as err:
        Profile("x", {"epochs": 1, key: domain}, 1, 1, 1, 1.0, 0.0, "")
    assert "profile x" in str(err.value)


def test_overrides_become_constants_or_choices_and_are_checked() -> None:
    space = overrides_space({"backbone": ["resnet50", "densenet121"], "resolution": 64})
    assert isinstance(space["backbone"], tune.search.sample.Categorical)
    assert space["backbone"].categories == ["resnet50", "densenet121"]
    assert space["resolution"] == 64
    check_space({**get_profile("brain", "gpu").space, **space}, "--set")  # valid: no error
    with pytest.raises(ConfigError, match="--set: trial config field backbone: unknown "
                       "backbone 'resnet5O'; valid backbones: baseline_cnn, resnet50"):
        check_space(overrides_space({"backbone": ["resnet50", "resnet5O"]}), "--set")
    with pytest.raises(ConfigError, match=r"\['lr'\] are not trial config fields"):
        check_space(overrides_space({"lr": 0.1}), "--set")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_space_to_json_round_trips(name: str, profile: str) -> None:
    space = get_profile(name, profile).space
    described = json.loads(json.dumps(space_to_json(space)))
    assert list(described) == list(space)
    for key, value in space.items():
        d = described[key]
        if isinstance(value, tune.search.sample.Categorical):
            assert d == {"type": "choice", "categories": value.categories}
        elif isinstance(value, tune.search.sample.Float):
            assert (d["lower"], d["upper"]) == (value.lower, value.upper)
        elif isinstance(value, dict):
            assert d == {"type": "grid_search", "values": value["grid_search"]}
        else:
            assert d == {"type": "constant", "value": value}


def test_space_to_json_describes_every_tune_domain() -> None:
    space = {
        "a": tune.choice(["x", 1, None]),
        "b": tune.loguniform(1e-4, 1e-1),
        "c": tune.uniform(0.0, 0.5),
        "d": tune.randint(1, 10),
        "e": tune.grid_search([1, 2]),
        "f": tune.quniform(0.0, 1.0, 0.25),
        "g": tune.randn(0.0, 1.0),
        "h": tune.sample_from(lambda config: 1),
        "i": 7,
    }
    got = json.loads(json.dumps(space_to_json(space)))
    assert got["a"] == {"type": "choice", "categories": ["x", 1, None]}
    assert got["b"] == {"type": "loguniform", "lower": 1e-4, "upper": 1e-1}
    assert got["c"] == {"type": "uniform", "lower": 0.0, "upper": 0.5}
    assert got["d"] == {"type": "randint", "lower": 1, "upper": 10}
    assert got["e"] == {"type": "grid_search", "values": [1, 2]}
    assert got["f"] == {"type": "quniform", "lower": 0.0, "upper": 1.0, "q": 0.25}
    assert got["g"] == {"type": "randn", "mean": 0.0, "sd": 1.0}
    assert got["h"]["type"] == "sample_from"
    assert got["i"] == {"type": "constant", "value": 7}


def test_sample_configs_is_seeded_and_cycles_grids() -> None:
    prof = get_profile("pneumonia", "gpu")
    assert sample_configs(prof, 6, seed=4) == sample_configs(prof, 6, seed=4)
    assert sample_configs(prof, 6, seed=4) != sample_configs(prof, 6, seed=5)
    assert [c["resolution"] for c in sample_configs(prof, 5, seed=0)] == [224, 384, 224, 384, 224]
    lrs = {c["lr_multiplier"] for c in sample_configs(prof, DRAWS, seed=0)}
    assert len(lrs) == DRAWS  # really drawn, not a constant
    assert all(type(v) in (str, int, float, bool) for c in sample_configs(prof, 3, seed=0)
               for v in c.values())


def test_sample_from_sees_the_rest_of_the_config() -> None:
    prof = Profile("x", {"epochs": 3, "batch_size": tune.choice([8, 16]),
                         "phantom_per_class": tune.sample_from(lambda c: c["batch_size"] * 2)},
                   1, 3, 1, 1.0, 0.0, "")
    for c in sample_configs(prof, 10, seed=0):
        assert c["phantom_per_class"] == 2 * c["batch_size"]


def test_replicates_are_extra_seeds_of_the_cross_validated_finalists() -> None:
    from orchestrator.naming import candidate_name, replicate_of, replicate_seed

    profile = with_overrides(get_profile("brain", "smoke"), replicates=3)
    assert profile.replicates == 3 and get_profile("brain", "smoke").replicates == 1
    with pytest.raises(ConfigError, match="need the cross-validation stage"):
        with_overrides(get_profile("brain", "smoke"), replicates=2, cv_folds=0)
    with pytest.raises(ConfigError, match="replicates must be in 1..20"):
        with_overrides(get_profile("brain", "smoke"), replicates=0)
    assert [replicate_seed(7, r) for r in range(3)] == [7, 1007, 2007]
    assert replicate_of({"finalist": 0, "cv_fold": 1}) == 0
    assert replicate_of({"replicate": 2}) == 2
    assert candidate_name("abc_00003", 0) == "abc_00003"
    assert candidate_name("abc_00003", 2) == "abc_00003-r2"
