"""The sweep end to end on a real local Ray and a real SQLite MLflow store."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray

from orchestrator import tracking
from orchestrator.sweep.__main__ import main as sweep_main
from orchestrator.sweep.runner import run_sweep
from orchestrator.errors import ConfigError
from orchestrator.cluster import check_trial_fits, set_driver_defaults
from orchestrator.sweep.state import SWEEP_STATE
from orchestrator.train.artifacts import FAULT_MARKER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _sweep_cli(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _store_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'mlflow' / 'mlflow.db'}"


def _store(cwd: Path):
    uri = _store_uri(cwd)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("medsweep-brain")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_SWEEP]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_TRIAL]
    return client, parents, children


def _ensembles(cwd: Path):
    client, _, _ = _store(cwd)
    experiment = client.get_experiment_by_name("medsweep-brain")
    return [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_ENSEMBLE]


def test_cli_smoke_sweep_records_parent_children_epochs_and_artifacts(cli_smoke_sweep,
                                                                       tmp_path):
    # the brain phantom in the real layout, with a training image copied into Testing/
    # (tests/conftest.py; tests/test_console.py reads what the same run printed)
    cwd, proc, train_img = cli_smoke_sweep
    assert "MLflow parent run:" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert "then the runs table: http://127.0.0.1:5000/#/experiments/" in proc.stdout
    # a line per trial and epoch, by the trial's run name (Tune's table: --verbose only)
    assert len(re.findall(r"^t\d\d lr x[\d.]+ ls 0.05 +epoch 1/2  val_accuracy \d\.\d{3}  ",
                          proc.stdout, re.M)) == 2
    assert "Number of trials" not in proc.stdout
    client, parents, children = _store(cwd)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["synthetic_data"] == "true"
    assert parent.data.params["version.ray"] == ray.__version__
    assert {"search_space.json", "manifest.csv", "manifest.json", "tune_results.csv",
            "unreadable.csv", "duplicates.csv", "duplicates_left_out.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    # the copy was grouped before splitting and its training twin left out, by default
    pairs = pd.read_csv(client.download_artifacts(parent.info.run_id, "duplicates.csv",
                                                  str(tmp_path / "dl")))
    planted = pairs[(pairs["path_a"] == "Training/glioma/" + train_img.name)
                    & (pairs["path_b"] == "Testing/glioma/Te-gl_copy.jpg")]
    assert planted[["final_split_a", "final_split_b"]].values.tolist() == [["dropped", "test"]]
    assert int(parent.data.params["duplicate_pairs"]) == len(pairs) >= 1
    assert int(parent.data.params["duplicates_left_out"]) >= 1
    assert f"{len(pairs)} duplicate pair(s) grouped" in proc.stdout
    assert len(children) == 2  # the smoke profile's two trials
    # the parent run summarises the sweep and links what it made
    metrics, tags = parent.data.metrics, parent.data.tags
    assert metrics["trials_run"] == 2 and metrics["trials_failed"] == 0
    assert metrics["best_val_accuracy"] == max(c.data.metrics["best_val_accuracy"]
                                               for c in children)
    # 16 phantoms per class leave fewer than 20 test groups: the test figure, no interval
    assert "ensemble_test_accuracy" in metrics and "ensemble_test_accuracy_ci_low" not in metrics
    assert re.search(r"^test holds \d+ groups \(< 20\): no interval for any test figure$",
                     proc.stdout, re.M)
    assert re.search(r"test accuracy \d\.\d{3} \[no interval\]", tags["mlflow.note.content"])
    assert tags["medsweep.best_trial_run"] in {c.info.run_id for c in children}
    assert tags["medsweep.model_version"].startswith("medsweep-brain/")
    assert f"runs/{tags['medsweep.best_trial_run']}?workflowType=machine_learning)" in \
        tags["mlflow.note.content"]
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "tune_results.csv",
                                                  str(tmp_path / "board")))
    assert set(board["status"]) <= {"completed", "stopped early (ASHA)"}
    assert metrics["trials_stopped_early"] == (board["status"] == "stopped early (ASHA)").sum()
    for child in children:
        assert child.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert child.data.tags[tracking.TAG_STATUS] in ("completed", "stopped_early")
        assert child.data.params["task"] == parent.data.params["task"] == "brain/3class"
        # named by what differs (the smoke profile searches lr_multiplier, label_smoothing)
        assert re.fullmatch(r"t\d\d lr x[\d.]+ ls 0.05", child.info.run_name), \
            child.info.run_name
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        best = max(history, key=lambda m: (m.value, -m.step))
        assert child.data.metrics["best_val_accuracy"] == best.value
        assert child.data.metrics["best_epoch"] == best.step
        assert "phase" not in child.data.metrics and child.data.tags["medsweep.phase"] == "1"
        if child.data.tags[tracking.TAG_STATUS] == "stopped_early":
            assert child.data.tags["medsweep.stopped_by"].startswith("ASHA after epoch")
        # --set reached every trial: a constant, and a one-value choice
        assert (child.data.params["dropout"], child.data.params["label_smoothing"]) == (
            "0.3", "0.05")
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, len(steps) + 1)) and steps
        assert {"best.keras", "val_probs.npy"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)}
        assert "done" not in child.data.metrics  # no Tune bookkeeping in the user's metrics
    (ensemble,) = _ensembles(cwd)  # the final ensemble, built at the end of every sweep
    assert ensemble.data.tags[tracking.PARENT_TAG] == parent.info.run_id
    assert "final ensemble for brain/3class" in proc.stdout and "test [95% CI]" in proc.stdout
    assert "report.html" in proc.stdout
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    assert version.run_id == ensemble.info.run_id


def test_a_trial_that_crashes_resumes_from_its_checkpoint_with_one_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep("brain", profile="smoke", num_samples=1, max_epochs=3, cv_folds=0,
                       storage_path=str(tmp_path / "runs"), tracking_uri=uri,
                       space_overrides={"fail_at_epoch": 2}, ensemble=False,
                       log=lambda _: None)
    board = result.leaderboard
    assert len(board) == 1 and board.loc[0, "status"] == "completed" and board.loc[0, "epochs"] == 3
    markers = list((tmp_path / "runs").rglob(FAULT_MARKER))
    assert markers, "the injected fault never fired"
    client = mlflow.MlflowClient(tracking_uri=uri)
    children = tracking.list_trial_runs(uri, client.get_run(result.parent_run_id).info
                                        .experiment_id, result.parent_run_id)
    assert len(children) == 1
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_loss")]
    assert steps == [1, 2, 3]  # epochs 1-2 were not retrained after the crash
    assert children[0].data.tags[tracking.TAG_STATUS] == "completed"


def _ray_processes(pids: set[int]) -> list[str]:
    """Those of `pids` still alive as Ray processes (cmdline `ray::...`), described."""
    import psutil  # Ray's own copy, importable once ray is

    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            line = " ".join(process.cmdline())
            if process.status() != psutil.STATUS_ZOMBIE and line.startswith("ray::"):
                alive.append(f"{pid} {line[:60]}")
        except psutil.Error:
            continue
    return alive


def _session_ray_processes(session: int) -> set[int]:
    """Every `ray::` process in that session, whoever its parent is now (orphans included)."""
    import psutil

    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(process.pid) == session and " ".join(
                    process.info["cmdline"] or []).startswith("ray::"):
                found.add(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "fresh"])
def test_reused_actors_run_trial_after_trial_in_one_process(reuse, tmp_path, own_ray):
    set_driver_defaults()  # as connect_ray does, for the Ray this test starts itself
    # "local": a Ray of its own, never another test's cluster on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # one trial at a time
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # ASHA: a trial it stops leaves its process to the next one mid-way (the path that failed
    # when Tune waited only 2 s for the stopped trial's thread); without reuse, two trials are
    # enough to see a process each
    trials = 4 if reuse else 2
    result = run_sweep("brain", profile="smoke", num_samples=trials, cpus_per_trial=2,
                       cv_folds=0, storage_path=str(tmp_path / "runs"), tracking_uri=uri,
                       reuse_actors=reuse, ensemble=False, log=lambda _: None)
    assert list(result.leaderboard["status"]) == ["completed"] * trials
    pids = set()
    for results in Path(result.experiment_path).glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        assert [r["epoch"] for r in rows] in ([1], [1, 2])  # each from its own first epoch
        pids |= {r["pid"] for r in rows}
    assert len(pids) == (1 if reuse else trials)
    client = mlflow.MlflowClient(tracking_uri=uri)
    children = tracking.list_trial_runs(uri, client.get_run(result.parent_run_id).info
                                        .experiment_id, result.parent_run_id)
    assert len(children) == trials and all(c.data.tags[tracking.TAG_STATUS] in (
        "completed", "stopped_early") for c in children)


def test_a_trial_starts_from_a_clean_keras_state():
    import threading

    import keras

    from orchestrator.sweep.trainable import _fresh_keras

    names = []

    def trial():  # a reused actor runs each trial in the same process
        keras.layers.Dense(2)
        _fresh_keras()
        names.append(keras.layers.Dense(2).name)

    thread = threading.Thread(target=trial)
    thread.start()
    thread.join()
    assert names == ["dense"]  # not dense_1: nothing of the previous model is left


# Each kill/resume path once, two sweeps in all: the search stage under TPE (its searcher's
# state restored) with local storage and Ctrl+C; the cross-validation stage with a URI storage
# path (it goes through pyarrow.fs as s3:// does) and SIGTERM (timeout, kill, a batch
# scheduler), which must do what Ctrl+C does. The driver turns SIGTERM into what SIGINT does
# (cluster.sigterm_as_ctrl_c) before Tune sees it, so signal, storage and stage do not interact.
INTERRUPTIONS = {
    # killed after its third trial started: a searcher started afresh with the same seed would
    # draw the first configurations again (continuous learning rates: a repeat is the same
    # seed's draw, never chance)
    "search-tpe-local-SIGINT": dict(
        stop=signal.SIGINT, storage="local", trials=4,
        args=["--search", "tpe", "--num-samples", "4", "--max-epochs", "3", "--scheduler",
              "fifo", "--cv-folds", "0"],
        ready="*/run_tune_trial_*", ready_count=3),
    # killed while the fold trials run (a fold trial at its second checkpoint has 4 epochs to
    # go; on 2 CPUs two of the 2 finalists x 2 folds have not started): --resume keeps the
    # finished search and restores the fold trials and those still to queue (StagedSearch's
    # state)
    "cv-uri-SIGTERM": dict(
        stop=signal.SIGTERM, storage="uri", trials=2,
        args=["--num-samples", "2", "--max-epochs", "6"],
        ready="*/run_tune_trial_*cv_fold=*/checkpoint_000002", ready_count=1),
}


@pytest.mark.parametrize("case", list(INTERRUPTIONS))
def test_an_interrupted_sweep_resumes_without_duplicate_runs(case, tmp_path):
    import psutil

    spec = INTERRUPTIONS[case]
    args = ["brain", "--profile", "smoke", "--no-ensemble", *spec["args"]]
    checkpoints = tmp_path / "runs" / "sweeps"  # the default --storage-path
    if spec["storage"] == "uri":
        checkpoints = tmp_path / "remote-storage"
        args += ["--storage-path", checkpoints.as_uri()]
    out_file, err_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_file.open("w") as out, err_file.open("w") as err:  # pipes could fill and block it
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *args],
                                cwd=tmp_path, env=_env(), stdout=out, stderr=err,
                                start_new_session=True)
    seen: set[int] = set()  # every process the driver started, workers included
    deadline = time.time() + 400
    while time.time() < deadline and len(list(checkpoints.glob(spec["ready"]))) < \
            spec["ready_count"]:
        seen |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    seen |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert _ray_processes(seen), "no Ray worker was seen: nothing to check below"
    proc.send_signal(spec["stop"])
    proc.wait(timeout=180)
    out, err = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 130, (out + err)[-3000:]
    (message,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    # The driver prints no traceback. A trial process being torn down can still print one,
    # forwarded with its "(run_tune_trial pid=...)" prefix (seen once in three runs, in a weakref
    # callback during interpreter shutdown): an open point of the console issue, not asserted.
    driver_lines = [line for line in err.splitlines() if "pid=" not in line]
    assert "--resume" in message and not any("Traceback" in line for line in driver_lines)
    deadline = time.time() + 20  # a worker may take a moment to notice its raylet is gone
    while time.time() < deadline and _ray_processes(seen | _session_ray_processes(proc.pid)):
        time.sleep(0.5)
    assert not _ray_processes(seen | _session_ray_processes(proc.pid))
    (state,) = checkpoints.rglob(SWEEP_STATE)
    resumed = _sweep_cli(tmp_path, *args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming sweep {state.parent.name}" in resumed.stdout
    if spec["storage"] == "uri":
        assert not (tmp_path / "runs").exists()  # nothing fell back to the local default
    client, parents, children = _store(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[tracking.TAG_TRIAL_ID] for c in children]
    assert len(trial_ids) == spec["trials"] == len(set(trial_ids))
    assert all(c.data.tags[tracking.TAG_STATUS] in ("completed", "stopped_early")
               for c in children)
    if "--search" in spec["args"]:  # the searcher's history, not a fresh searcher
        drawn = {(c.data.params["lr_multiplier"], c.data.params["label_smoothing"])
                 for c in children}
        assert len(drawn) == spec["trials"], drawn
        assert parents[0].data.params["search"] == "tpe"
        assert list(checkpoints.glob("*/searcher-state-*.pkl"))  # saved by Tune
    else:  # one run per finalist and fold: no fold trial ran twice into two runs
        experiment_id = parents[0].info.experiment_id
        folds = tracking.list_trial_runs(_store_uri(tmp_path), experiment_id,
                                         parents[0].info.run_id, kind=tracking.KIND_CV_TRIAL)
        cells = [(r.data.tags[tracking.TAG_FINALIST], r.data.tags[tracking.TAG_FOLD])
                 for r in folds]
        assert len(cells) == 4 == len(set(cells))
        assert {r.data.tags[tracking.TAG_STATUS] for r in folds} == {"completed"}


def test_two_node_cluster_spreads_trials_and_tta_actors_and_ensembles_from_storage(tmp_path,
                                                                                    own_ray):
    """Trials and TTA actors on both nodes; checkpoints in --storage-path; the ensemble's
    actors read the models from those checkpoints, not from files on the driver. Two trials
    and two scoring actors of one CPU each on two one-CPU nodes: one of each on every node."""
    import pandas as pd
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    storage = tmp_path / "shared-storage"
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        result = run_sweep("brain", profile="smoke", num_samples=2, address=cluster.address,
                           cv_folds=0,
                           storage_path=str(storage), tracking_uri=uri, log=lambda _: None)
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = client.get_run(result.parent_run_id).info.experiment_id
        children = tracking.list_trial_runs(uri, experiment_id, result.parent_run_id)
        nodes = {c.data.tags[tracking.TAG_NODE] for c in children}
        assert len(children) == 2 and len(nodes) == 2
        checkpoints = [c.data.tags[tracking.TAG_CHECKPOINT] for c in children]
        assert all(cp.startswith(str(storage)) and (Path(cp) / "best.keras").is_file()
                   for cp in checkpoints)

        assert result.ensemble is not None
        scoring = pd.read_csv(client.download_artifacts(result.ensemble.run_id, "scoring.csv",
                                                        str(tmp_path)))
        val = scoring[scoring.split == "held_out"]
        assert len(val) == 2 and set(val.node) == nodes
        assert val.source.str.startswith(f"checkpoint {storage}").all(), val.source.tolist()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("args,needle", [
    (["bogus"], "unknown task 'bogus'"),
    (["brain", "--profile", "huge"], "huge"),
    (["brain", "--data-dir", "/nonexistent/brain"], "/nonexistent/brain"),
    (["brain", "--address", "127.0.0.1:1"], "127.0.0.1:1"),
    (["brain", "--tracking-uri", "http://127.0.0.1:1"], "http://127.0.0.1:1"),
    (["brain", "--tracking-uri", "foo://bar"], "MLflow has no store for scheme 'foo'"),
    (["brain", "--gpus-per-trial", "2"], "one trial needs 1 CPU and 2 GPU, and this "
     "cluster cannot hold that (nodes: 2 CPU, 0 GPU)"),
    (["brain", "--resume"], "nothing to resume"),
    (["brain", "--resume", "--storage-path", "file:///nonexistent/medsweep"],
     "nothing to resume for experiment 'medsweep-brain' under file:///nonexistent/medsweep"),
])
def test_bad_input_is_one_line_nonzero_and_writes_no_run(args, needle, tmp_path,
                                                         cli_in_process):
    argv = args if "--profile" in args else [*args, "--profile", "smoke"]
    code, _, err = cli_in_process(sweep_main, argv, tmp_path)
    assert code == 2, err[-2000:]
    assert needle in err and "Traceback" not in err
    db = tmp_path / "mlflow" / "mlflow.db"
    if db.exists():
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiments = client.search_experiments()
        assert not client.search_runs([e.experiment_id for e in experiments])


@pytest.mark.parametrize("override,needle", [
    ("backbone=resnet5O", "--set: trial config field backbone: unknown backbone 'resnet5O'; "
     "valid backbones: baseline_cnn, resnet50, densenet121, efficientnetb0, mobilenetv3small"),
    ('schedule=["full", "one_phase"]', "unknown schedule 'one_phase'; valid schedules: "),
    ("learning_rate=0.1", "['learning_rate'] are not trial config fields"),
    ("backbone", "--set 'backbone': expected KEY=VALUE"),
])
def test_cli_refuses_a_bad_override_before_ray_starts(override, needle, tmp_path,
                                                      cli_in_process):
    _refused_before_ray(cli_in_process(sweep_main, ["brain", "--profile", "smoke", "--set",
                                                    override], tmp_path), needle, tmp_path)


def test_cli_refuses_a_bad_set_coverage_before_ray_starts(tmp_path, cli_in_process):
    refused = cli_in_process(sweep_main, ["brain", "--profile", "smoke", "--set-coverage", "0"],
                             tmp_path)
    _refused_before_ray(refused, "--set-coverage: set coverage must be strictly between 0 and "
                                 "1, got 0.0", tmp_path)


def test_the_entry_point_refuses_in_one_line_before_ray_starts(tmp_path):
    """`python -m orchestrator.sweep` itself (the cases above call its `main` in-process)."""
    proc = _sweep_cli(tmp_path, "bogus", "--profile", "smoke", timeout=120)
    _refused_before_ray((proc.returncode, proc.stdout, proc.stderr), "unknown task 'bogus'",
                        tmp_path)


def _refused_before_ray(refused: tuple[int, str, str], needle: str, tmp_path) -> None:
    code, out, err = refused
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "ray:" not in out  # connect_ray announces the cluster it joined or started
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, no mlflow/


def test_a_request_no_node_meets_is_refused_locally_and_announced_on_a_cluster(own_ray):
    set_driver_defaults()  # as connect_ray does, for the Ray this test starts itself
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False,
             logging_level="ERROR")
    lines: list[str] = []
    with pytest.raises(ConfigError, match="one trial needs 1 CPU and 2 GPU"):
        check_trial_fits(1, 2, lines.append, can_grow=False)
    check_trial_fits(1, 2, lines.append, can_grow=True)  # an autoscaler may add such a node
    assert len(lines) == 1 and "nodes that can are being requested" in lines[0]
    check_trial_fits(1, 0, lines.append, can_grow=False)  # it fits: nothing said
    check_trial_fits(1, 0, lines.append, can_grow=False, workers=2)  # two one-CPU workers fit
    assert len(lines) == 1
    with pytest.raises(ConfigError, match="one trial needs 3 workers of 1 CPU and 0 GPU each"):
        check_trial_fits(1, 0, lines.append, can_grow=False, workers=3)


def test_the_data_decoded_beside_rays_start_never_freezes_a_fork():
    """`run_sweep` decodes the data in a thread (`one_blas_thread`) while `ray.init` forks
    Ray's processes. With BLAS threaded, a fork meeting a matrix product in that thread hangs
    for good (`bench/fork_during_blas.py` shows it); inside `one_blas_thread` it cannot."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from fork_during_blas import child

    answer = child("one", forks=200, timeout=120)
    assert not answer.startswith(("HUNG", "failed")), answer
    inside, after = map(int, re.search(r"BLAS threads: (\d+) in the job, (\d+) after", answer)
                        .groups())
    if after < 2:
        pytest.skip("BLAS runs on one thread on this machine anyway: nothing to race")
    assert inside == 1, answer
