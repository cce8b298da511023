"""What a sweep prints: TensorFlow's C++ start-up lines, Python warnings and Ray's checkpoint-path
lines stay off (driver and workers) unless --verbose; Tune's table shows the task metric."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import console
from orchestrator.console import QUIET_ENV, VERBOSE_ENV, worker_env

ROOT = Path(__file__).resolve().parents[1]
TF_START_UP = ("oneDNN", "cuInit", "cudart", "absl::InitializeLog", "cuda_platform")
CHECKPOINT_LINES = ("Checkpoint successfully created", "checkpoint_0000")
# MLflow's own notices while the model is logged and registered (the sweep says it itself)
MLFLOW_NOTICES = ("CloudPickle", "Created version", "already exists. Creating a new version",
                  "Successfully registered model")
RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def test_workers_get_quiet_settings_unless_verbose():
    assert worker_env(False) == {VERBOSE_ENV: "0", **QUIET_ENV}
    assert QUIET_ENV["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert worker_env(True) == {VERBOSE_ENV: "1"}  # nothing silenced, nothing overridden


def test_rays_token_and_slow_step_notices_are_dropped_and_its_other_warnings_pass():
    def passes(logger: str, message: str) -> bool:
        record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
        return console._FILTERS[logger].filter(record)

    token = "ray._private.authentication.authentication_token_setup"
    assert not passes(token, RAY_TOKEN_NOTICE + ". Set RAY_AUTH_MODE=disabled to opt out.")
    assert passes(token, "Token authentication is disabled for this Ray cluster. Anyone with "
                         "network access to the cluster can run arbitrary code")
    tune_util = "ray.tune.utils.util"
    assert not passes(tune_util, "The `process_trial_result` operation took 0.600 s, which may "
                                 "be a performance bottleneck.")
    assert passes(tune_util, "Install psutil to monitor system performance.")


def test_the_status_line_counts_trials_and_names_the_best_with_its_searched_values():
    from types import SimpleNamespace as Trial

    from orchestrator.sweep.trainable import status_line

    trials = [Trial(trial_id="a", status="TERMINATED", config={"lr": 0.0123456, "aug": "none"},
                    last_result={"val_accuracy": 0.75, "epoch": 8}),
              Trial(trial_id="b", status="RUNNING", config={"lr": 0.5, "aug": "light"},
                    last_result={"val_accuracy": 0.81, "epoch": 3}),
              Trial(trial_id="c", status="PENDING", config={}, last_result={})]
    line = status_line(trials, "val_accuracy", True, ["lr", "aug"])
    assert line == ("trials: 1 TERMINATED, 1 RUNNING, 1 PENDING; best so far b (lr=0.5, "
                    "aug=light) val_accuracy 0.810 at epoch 3")
    assert "best so far a (lr=0.0123, aug=none)" in status_line(trials, "val_accuracy", False,
                                                               ["lr", "aug"])
    assert status_line(trials[2:], "val_accuracy", True, []) == "trials: 1 PENDING"


def _sweep(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", VERBOSE_ENV, "RAY_ADDRESS",
                "MLFLOW_TRACKING_URI"):
        env.pop(key, None)  # as a user's shell would have it: TensorFlow's defaults
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "brain", "--profile",
                           "smoke", "--cv-folds", "0", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_sweep_prints_no_tensorflow_start_up_or_checkpoint_lines(tmp_path):
    out = _sweep(tmp_path)  # trials and the ensemble's TTA actors: every kind of worker
    noisy = [line for line in out.splitlines()
             if any(word in line for word in TF_START_UP + CHECKPOINT_LINES + MLFLOW_NOTICES)]
    assert noisy == []
    assert "val_accuracy" in out and "lr_multiplier" in out  # Tune's table: metric, searched
    assert "epoch 1/2" not in out  # per-epoch lines only with --verbose
    assert "final ensemble" in out


@pytest.mark.slow
def test_verbose_brings_tensorflow_start_up_lines_back(tmp_path):
    out = _sweep(tmp_path, "--verbose", "--no-ensemble", "--num-samples", "1")
    assert any(word in out for word in TF_START_UP)
    assert "epoch 1/2" in out  # and each trial's per-epoch lines
