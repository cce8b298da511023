"""What a sweep prints: one line per trial and epoch, printed by the driver; TensorFlow's C++
start-up lines, Python warnings, Ray's checkpoint-path lines and token-authentication notice,
Tune's status lines and tables stay off (driver and workers) unless --verbose."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import console
from orchestrator.console import QUIET_ENV, VERBOSE_ENV, worker_env

from conftest import user_env

ROOT = Path(__file__).resolve().parents[1]
TF_START_UP = ("oneDNN", "cuInit", "cudart", "absl::InitializeLog", "cuda_platform")
CHECKPOINT_LINES = ("Checkpoint successfully created", "checkpoint_0000")
# MLflow's own notices while the model is logged and registered (the sweep says it itself)
MLFLOW_NOTICES = ("CloudPickle", "Created version", "already exists. Creating a new version",
                  "Successfully registered model")
RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
# The driver's line per trial and epoch (docs/sweep.md, "Output"): the trial's name as in MLflow,
# the epoch, the task metric, the epoch's seconds; nothing before it (no Ray worker prefix).
EPOCH_LINE = re.compile(r"(?P<name>t\d\d\b.*?|cv t\d\d fold \d+/\d+) +epoch +(?P<epoch>\d+)/"
                        r"(?P<epochs>\d+)  val_accuracy (?:\d\.\d{3}|n/a)  \d+\.\ds")


def test_workers_get_quiet_settings_unless_verbose():
    assert worker_env(False) == {VERBOSE_ENV: "0", **QUIET_ENV}
    assert QUIET_ENV["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert worker_env(True) == {VERBOSE_ENV: "1"}  # nothing silenced, nothing overridden


def test_an_exit_in_a_weakref_callback_prints_nothing_and_other_errors_still_show():
    """Tune ends a trial's process with SIGTERM; Ray's handler raises SystemExit wherever the
    process is, and inside a weakref callback Python prints a traceback instead. Quiet, that
    one is dropped; an error of any other kind still shows."""
    code = "\n".join([
        "import weakref",
        "from orchestrator import console",
        "console.quiet_process()",
        "class Thing: pass",
        "def stop(_): raise SystemExit(1)",
        "def broken(_): raise ValueError('a real problem')",
        "a, b = Thing(), Thing()",
        "r1, r2 = weakref.ref(a, stop), weakref.ref(b, broken)",
        "del a, b",
        "print('still running')"])
    env = {**os.environ, VERBOSE_ENV: "0", "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=60)
    assert quiet.returncode == 0 and "still running" in quiet.stdout
    assert "SystemExit" not in quiet.stderr and "Exception ignored" in quiet.stderr
    assert "a real problem" in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, VERBOSE_ENV: "1"}, cwd=ROOT, timeout=60)
    assert "SystemExit" in loud.stderr


def test_the_epoch_line_names_the_trial_its_epoch_metric_and_seconds():
    from orchestrator.sweep.progress import epoch_line

    line = epoch_line("t03 three_phase lr x3.496", 4, 8, "val_accuracy", 0.80555, 2.94)
    assert line == "t03 three_phase lr x3.496  epoch 4/8  val_accuracy 0.806  2.9s"
    assert EPOCH_LINE.fullmatch(line)
    assert epoch_line("cv t03 fold 2/3", 7, 30, "val_accuracy", None, float("nan")) == \
        "cv t03 fold 2/3  epoch  7/30  val_accuracy n/a"  # epochs aligned; no time: none shown


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


def test_a_repeated_line_is_logged_once_unless_verbose(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    lines: list[str] = []
    log = console.once(lines.append)
    for line in ("cache hit: 300 images", "data: 300 images", "data as recorded: 300",
                 "data as recorded: 300", "cache hit: 300 images"):
        log(line)
    assert lines == ["data: 300 images", "data as recorded: 300"]  # a hit is routine
    monkeypatch.setenv(VERBOSE_ENV, "1")
    log("cache hit: 300 images")
    log("data: 300 images")
    assert lines[-2:] == ["cache hit: 300 images", "data: 300 images"] and len(lines) == 4


def test_the_status_line_counts_trials_and_names_the_best_with_its_searched_values():
    from types import SimpleNamespace as Trial

    from orchestrator.sweep.progress import status_line

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
    # as a user's shell would have it: TensorFlow's and Ray's defaults
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "brain", "--profile",
                           "smoke", *args], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


def _epochs_in_mlflow(cwd: Path) -> dict[str, int]:
    """Each trial run's name (search and cross-validation) -> how many epochs it logged."""
    import mlflow

    from orchestrator import tracking

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medsweep-brain")
    return {run.info.run_name: len(client.get_metric_history(run.info.run_id, "val_accuracy"))
            for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get(tracking.TAG_KIND) in (tracking.KIND_TRIAL,
                                                         tracking.KIND_CV_TRIAL)}


@pytest.mark.slow
def test_a_sweep_prints_a_line_per_trial_and_epoch_and_no_library_noise(cli_smoke_sweep):
    # the smoke sweep from a user's shell, every stage: the search, cross-validation, the
    # ensemble's TTA actors (tests/conftest.py; tests/test_sweep.py reads what it recorded)
    cwd, proc, _ = cli_smoke_sweep
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    noisy = [line for line in lines if any(word in line for word in TF_START_UP
                                           + CHECKPOINT_LINES + MLFLOW_NOTICES)]
    assert noisy == []
    assert RAY_TOKEN_NOTICE not in out
    # each epoch of each trial exactly once, in the documented form, from the driver
    shown: dict[str, list[int]] = {}
    for line in lines:
        found = EPOCH_LINE.fullmatch(line)
        if found:
            shown.setdefault(found["name"].strip(), []).append(int(found["epoch"]))
    logged = _epochs_in_mlflow(cwd)
    assert len(logged) == 2 + 2 * 2  # the smoke profile: 2 trials, 2 finalists x 2 folds
    assert {name: sorted(epochs) for name, epochs in shown.items()} == {
        name: list(range(1, n + 1)) for name, n in logged.items()}
    assert not [line for line in lines if "epoch" in line and not EPOCH_LINE.fullmatch(line)
                and re.search(r"epoch \d+/\d+", line)]  # no worker's own line, no pid= prefix
    assert "Number of trials" not in out  # Tune's table and status lines: --verbose only
    assert not re.search(r"^trials: \d+ ", out, re.M)
    assert "final ensemble for brain/3class" in out and "test [95% CI]" in out
    # what every trial shares is said once, when the search starts; the leaderboard shows
    # only what differs
    search = next(line for line in lines if line.startswith("search: "))
    assert "the same in every trial: backbone baseline_cnn, resolution 32" in search
    header = lines[next(i for i, line in enumerate(lines) if "sweep finished" in line) + 1]
    assert header.split()[:2] == ["trial", "best_val_accuracy"]
    assert "backbone" not in header and "resolution" not in header
    # every other line is the sweep's own: data, stages, leaderboard, links, ensemble figures
    epoch_lines = sum(len(epochs) for epochs in shown.values())
    assert len(lines) - epoch_lines <= 40, out
    assert len(lines) <= 55, out


@pytest.mark.slow
def test_verbose_brings_tensorflow_start_up_lines_back(tmp_path):
    out = _sweep(tmp_path, "--verbose", "--no-ensemble", "--num-samples", "1", "--cv-folds", "0")
    assert any(word in out for word in TF_START_UP)
    assert "epoch 1/2 [phase 1/1" in out  # each trial's own per-epoch lines
    assert "Number of trials: 1/1 (1 TERMINATED)" in out  # Tune's table at the end
    assert RAY_TOKEN_NOTICE in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal_and_prints_tenths_when_piped():
    terminal = _Terminal()
    bar = console.Progress(4, "scoring", "models", stream=terminal)
    for done in range(1, 5):
        bar.update(done)
    text = terminal.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("4/4 models, 0 s\n")
    assert "\rscoring [#######.......................] 1/4 models" in text

    piped = io.StringIO()
    bar = console.Progress(20, "predicting", "images", "img/s", stream=piped)
    for done in range(1, 21):
        bar.update(done)
    lines = piped.getvalue().splitlines()  # the first image, then each tenth
    assert len(lines) == 11 and lines[-1].startswith("predicting [" + "#" * 30 + "] 20/20 images, ")
    assert all(line.endswith(" img/s") for line in lines)

    for quiet in (console.Progress(3, "scoring", "models", stream=io.StringIO(), piped=False),
                  console.Progress(3, "scoring", "models", stream=_Terminal(), piped=False,
                                   tty=False)):
        for done in range(1, 4):
            quiet.update(done)
        assert quiet.stream.getvalue() == ""


# --- the ensemble's summary ------------------------------------------------------------------
def _ensemble_report(groups):
    """A summary of two models' figures on 40 test cases in `groups`, with their intervals
    from the real bootstrap."""
    import numpy as np
    import pandas as pd

    from orchestrator.clinical.bootstrap import count_units, intervals_by_model, resample_indices
    from orchestrator.clinical.calibration import brier_score
    from orchestrator.clinical.resampled_metrics import fast_metrics
    from orchestrator.clinical.weighted_metrics import weighted_metrics
    from orchestrator.ensemble.report import EnsembleReport

    y = np.arange(40) % 2
    probs = {}
    for name, wrong in (("ensemble", 7), ("best_single", 5)):
        pred = np.where(np.arange(40) % wrong == 0, 1 - y, y)
        probs[name] = np.eye(2)[pred] * 0.7 + 0.15
    table = pd.DataFrame([{"model": k, **{f"{split}_{m}": v for m, v in fast_metrics(y, p).items()
                                          for split in ("val", "test")}}
                          for k, p in probs.items()])
    draws = resample_indices(y, groups, 1000, 0)
    intervals = intervals_by_model(
        probs, "ensemble",
        lambda idx: {"brier": brier_score(y[idx], probs["ensemble"][idx])},
        lambda counts, p: weighted_metrics(y, p, counts), draws, count_units(y, groups))
    return EnsembleReport(run_id="r" * 32, task="pneumonia", policy="none", members=("t01",),
                          weights=(1.0,), table=table, model_uri="models:/m/1",
                          registered="medsweep-pneumonia@candidate (version 1)",
                          tracking_uri="sqlite:///mlflow.db", intervals=intervals)


def test_the_summary_of_a_one_group_test_split_shows_points_and_says_why_once(capsys):
    import numpy as np

    from orchestrator.ensemble.report import print_report

    print_report(_ensemble_report(np.zeros(40)))
    out = capsys.readouterr().out
    assert "test [95% CI]" in out
    assert not re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", out)  # no [x, x] anywhere
    row = next(line for line in out.splitlines() if line.startswith("balanced_accuracy"))
    assert row.count("[no interval]") == 2  # both models' test cells
    assert out.count("test holds 1 group: no interval for any test figure") == 1
    assert re.search(r"ensemble test: brier \d\.\d{3} \[no interval\]", out)

    print_report(_ensemble_report(np.arange(40) // 2))  # 20 groups: as before
    out = capsys.readouterr().out
    assert "no interval" not in out
    row = next(line for line in out.splitlines() if line.startswith("balanced_accuracy"))
    assert len(re.findall(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", row)) == 2


def test_the_summary_gives_the_refer_rule_with_its_bound_or_the_plain_unreachable_line(capsys):
    import dataclasses

    import numpy as np

    from orchestrator.clinical.referral import REFER_ALL, Referral
    from orchestrator.ensemble.report import print_report

    base = dataclasses.replace(_ensemble_report(np.arange(40) // 2), chosen_on="out-of-fold")
    supported = Referral(0.92, 0.95, 0.604, 0.986, 240, 0.95, 0.953)
    print_report(dataclasses.replace(base, referral=supported))
    out = capsys.readouterr().out
    assert ("refer rule: confidence < 0.9200 is referred: 60.4% of 240 out-of-fold cases "
            "accepted at accuracy 0.986, 95% lower bound 0.953 >= target 0.95") in out
    print_report(dataclasses.replace(base, referral=Referral(REFER_ALL, 0.95, 0.0, float("nan"),
                                                             240)))
    out = capsys.readouterr().out
    assert ("refer rule: no confidence level supports accuracy 0.95 on these 240 out-of-fold "
            "cases (a perfect record needs at least 120 accepted cases); every case would be "
            "referred: lower the target or add data") in out
    assert "0.9954" not in out and "refer cut: confidence" not in out  # no unsupported cut


def test_the_summary_gives_one_line_of_prediction_sets_per_head():
    import pandas as pd

    from orchestrator.clinical.conformal import EVERY_CLASS, SetFit
    from orchestrator.ensemble.report import set_lines

    ens = pd.DataFrame({"metric": ["set_coverage", "set_size_mean", "shape_set_coverage",
                                   "shape_set_size_mean"],
                        "point": [0.912, 1.43, 0.95, 3.0], "low": [0.87, 1.3, 0.9, 3.0],
                        "high": [0.95, 1.6, 1.0, 3.0],
                        "note": ["", "", "", "zero-width interval: no interval"]}
                       ).set_index("metric")
    lines = set_lines((("", SetFit(0.9, (0.81,), (60,))),
                       ("shape", SetFit(0.8, (EVERY_CLASS, 0.5, 0.4), (3, 30, 30),
                                        conditional=True))), ens, "out-of-fold")
    assert lines == [
        "prediction sets (90% nominal, fitted on out-of-fold predictions): test coverage "
        "0.912 [0.870, 0.950], mean set size 1.430 [1.300, 1.600]",
        "head shape prediction sets (80% nominal, one quantile per class, fitted on out-of-fold "
        "predictions): test coverage 0.950 [0.900, 1.000], mean set size 3.000 [no interval]; "
        "too few held-out cases for 1 class quantile(s), so those classes are in every set"]
