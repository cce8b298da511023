"""The sweep's typed records: the budget built once from a profile and the CLI, and the
versioned sweep state a resume reads (an older file still resumes, a newer one is refused)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.errors import ConfigError
from orchestrator.sweep.budget import Budget
from orchestrator.sweep.state import (STATE_VERSION, SWEEP_STATE, SweepState, read_sweep_state,
                                      write_sweep_state)
from search_spaces import get_profile


def test_the_budget_takes_the_profiles_values_and_the_clis_overrides():
    profile = get_profile("brain", "cpu")
    kept = Budget.of(profile, {"num_samples": None, "max_epochs": None})
    assert kept == Budget.of(profile) and kept.num_samples == profile.num_samples
    short = Budget.of(profile, {"max_epochs": 2, "cv_folds": 0, "cv_top": 0})
    assert (short.max_epochs, short.grace_period, short.cv_folds) == (2, 2, 0)
    assert short.applied(profile).space["epochs"] == 2 and short.applied(profile).max_epochs == 2
    with pytest.raises(ValueError, match="unknown budget override"):
        Budget.of(profile, {"epochs": 3})
    with pytest.raises(ConfigError):  # checked as the profile checks it
        Budget.of(profile, {"replicates": 0})


def _state(**changes) -> SweepState:
    values = dict(parent_run_id="p1", experiment_id="3", tracking_uri="sqlite:///m.db",
                  task="brain", profile="smoke", data_dir=None, name="medsweep-brain-1",
                  path="/s/medsweep-brain-1", budget=Budget.of(get_profile("brain", "smoke")),
                  space_overrides={"backbone": "baseline_cnn"})
    return SweepState(**{**values, **changes})


def test_the_state_round_trips_through_its_file_with_its_version(tmp_path):
    state = _state(search="tpe")
    write_sweep_state(str(tmp_path), state)
    record = json.loads((tmp_path / SWEEP_STATE).read_text())
    assert record["version"] == STATE_VERSION and record["budget"]["num_samples"] >= 1
    assert read_sweep_state(str(tmp_path)) == state


def test_a_state_written_before_it_was_versioned_still_resumes(tmp_path):
    """The flat dict of earlier versions, written before cross-validation existed."""
    old = {"parent_run_id": "p1", "experiment_id": "3", "tracking_uri": "sqlite:///m.db",
           "task": "brain", "profile": "smoke", "data_dir": None, "name": "n", "path": "/s/n",
           "num_samples": 3, "max_epochs": 2, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    (tmp_path / SWEEP_STATE).write_text(json.dumps(old))
    state = read_sweep_state(str(tmp_path))
    assert (state.budget.num_samples, state.budget.max_epochs) == (3, 2)
    assert (state.budget.cv_folds, state.budget.cv_top, state.budget.replicates) == (0, 0, 1)
    assert state.space_overrides == {} and state.search == "random"


def test_a_two_experiment_sweep_with_cross_validation_is_refused_one_without_resumes(tmp_path):
    """Version 2 ran the fold trials as a second Tune experiment, which this version never
    restores: such a sweep is refused with what to do; one without folds resumes as it was."""
    record = json.loads(_state().to_json())
    record.update(version=2, cv_started=False)
    record["budget"]["cv_folds"] = 3
    (tmp_path / SWEEP_STATE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="second Tune experiment; resume it with that version"):
        read_sweep_state(str(tmp_path))
    record["budget"]["cv_folds"] = 0
    (tmp_path / SWEEP_STATE).write_text(json.dumps(record))
    assert read_sweep_state(str(tmp_path)).budget.cv_folds == 0


def test_a_newer_or_foreign_state_is_refused_with_one_clear_line(tmp_path):
    (tmp_path / SWEEP_STATE).write_text(json.dumps({"version": STATE_VERSION + 1}))
    with pytest.raises(ConfigError, match="written by a newer MedSweep"):
        read_sweep_state(str(tmp_path))
    (tmp_path / SWEEP_STATE).write_text(json.dumps({"version": STATE_VERSION, "task": "x"}))
    with pytest.raises(ConfigError, match="not a MedSweep sweep state"):
        read_sweep_state(str(tmp_path))


def test_importing_the_sweep_sets_none_of_its_environment_defaults(monkeypatch):
    """Ray's and Tune's defaults (cluster.DRIVER_ENV, WORKER_ENV) are set where Ray is
    connected, not as an import's side effect."""
    import os

    from orchestrator.cluster import DRIVER_ENV, WORKER_ENV, set_driver_defaults

    ours = sorted({**DRIVER_ENV, **WORKER_ENV})
    env = {k: v for k, v in os.environ.items() if k not in ours}
    code = ("import os, orchestrator.sweep.runner; "
            f"print([k for k in {ours!r} if k in os.environ])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout
    for key in ours:
        monkeypatch.delenv(key, raising=False)
    set_driver_defaults()
    assert [k for k in ours if k in os.environ] == ours
