"""orchestrator.tracking on a real SQLite MLflow store (no mocks).

One store for the module: creating a SQLite store runs MLflow's migrations (seconds).
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator import tracking as T
from orchestrator.errors import ConfigError


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """(tracking URI, experiment id) of a fresh SQLite store with one experiment."""
    workdir = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    (workdir / "mlflow").mkdir()
    return uri, T.ensure_experiment(uri, "tests", T.default_artifact_root(workdir))


@pytest.fixture(scope="module")
def sweep(store, tmp_path_factory) -> str:
    uri, experiment_id = store
    inputs = tmp_path_factory.mktemp("inputs")
    (inputs / "space.json").write_text('{"backbone": ["resnet50"]}')
    (inputs / "manifest.csv").write_text("path,split\na.png,train\n")
    return T.start_sweep_run(
        uri, experiment_id, run_name="sweep-1", tags={T.TAG_TASK: "brain"},
        params={"task": "brain", "num_samples": 4, **T.environment_params()},
        artifacts={"search_space.json": inputs / "space.json",
                   "split/manifest.csv": inputs / "manifest.csv"})


def _download(uri: str, run_id: str, path: str, dst: Path) -> bytes:
    return Path(MlflowClient(uri).download_artifacts(run_id, path, str(dst))).read_bytes()


# ------------------------------------------------------------------------------------ URIs
def test_default_uri_is_sqlite_under_workdir_unless_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(T.TRACKING_URI_ENV, raising=False)
    assert T.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert (tmp_path / "mlflow").is_dir()
    artifacts = (tmp_path / "mlflow" / "artifacts").resolve()
    assert T.default_artifact_root(tmp_path) == artifacts.as_uri() and artifacts.is_dir()
    monkeypatch.chdir(tmp_path)
    assert T.default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    monkeypatch.setenv(T.TRACKING_URI_ENV, "http://tracking.example:5000")
    assert T.default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_check_http_uri_fails_fast_naming_the_uri():
    with socket.socket() as sock:  # a free loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"MLflow tracking server {uri} does not answer"):
        T.check_tracking_uri(uri, timeout_s=2.0)
    assert time.monotonic() - start < 5.0


def test_check_http_uri_passes_a_server_that_answers_and_fails_a_silent_one():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's spelling)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        T.check_tracking_uri(f"http://127.0.0.1:{server.server_port}/")
        T.check_tracking_uri(f"http://127.0.0.1:{server.server_port}/prefix")  # 404 answers too
        server.shutdown()
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(ConfigError, match="does not answer"):
            T.check_tracking_uri(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        assert time.monotonic() - start < 3.0


def test_check_local_uri_refuses_relative_paths():
    with pytest.raises(ConfigError, match="relative path.*sqlite:////"):
        T.check_tracking_uri("sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="relative path.*file:///"):
        T.check_tracking_uri("mlruns")


def test_a_scheme_mlflow_has_no_store_for_is_one_line_naming_the_ones_it_has():
    with pytest.raises(ConfigError) as err:
        T.check_tracking_uri("foo://bar")
    message = str(err.value)
    assert message.startswith("MLflow tracking URI foo://bar: MLflow has no store for scheme "
                              "'foo'; it accepts ")
    for scheme in ("sqlite://", "http://", "https://", "file://", "postgresql://"):
        assert scheme in message
    T.check_tracking_uri("postgresql://user@db.invalid/mlflow")  # known scheme: no refusal here


def test_check_local_uri_needs_a_writable_folder(tmp_path):
    T.check_tracking_uri(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert (tmp_path / "new").is_dir()
    T.check_tracking_uri(tmp_path.as_uri())
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        T.check_tracking_uri(f"sqlite:///{tmp_path}/a_file/sub/mlflow.db")


def test_local_artifact_root_sits_next_to_the_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv(T.TRACKING_URI_ENV, raising=False)
    assert T.local_artifact_root(T.default_tracking_uri(tmp_path)) == T.default_artifact_root(
        tmp_path)
    assert T.local_artifact_root("http://head:5000") is None


def test_ui_command():
    assert T.ui_command("sqlite:////w/mlflow/mlflow.db", "file:///w/mlflow/artifacts") == (
        "mlflow ui --backend-store-uri sqlite:////w/mlflow/mlflow.db "
        "--default-artifact-root file:///w/mlflow/artifacts")
    assert T.ui_command("http://head:5000", None) == "http://head:5000"


def test_environment_params_have_versions_and_commit():
    env = T.environment_params()
    for key in ("version.ray", "version.tensorflow", "version.keras", "version.mlflow"):
        assert env[key][0].isdigit(), (key, env[key])
    assert len(env["git_commit"]) == 40 or env["git_commit"] == "unknown"


# ----------------------------------------------------------------------------- experiments
def test_ensure_experiment_is_idempotent_and_restores_a_deleted_one(store):
    uri, experiment_id = store
    assert T.ensure_experiment(uri, "tests", None) == experiment_id
    other = T.ensure_experiment(uri, "deleted-then-back", None)
    client = MlflowClient(uri)
    assert client.get_experiment(other).artifact_location.endswith("/mlflow/artifacts")
    client.delete_experiment(other)
    assert T.ensure_experiment(uri, "deleted-then-back", None) == other
    assert client.get_experiment(other).lifecycle_stage == "active"
    # MLflow 3 opens an experiment on its GenAI page unless the URL asks for the runs view:
    # the description links it
    tags = client.get_experiment(other).tags
    assert f"(#/experiments/{other}?workflowType=machine_learning)" in tags["mlflow.note.content"]
    assert T.runs_table_url(uri, other) == \
        f"http://127.0.0.1:5000/#/experiments/{other}?workflowType=machine_learning"
    assert T.runs_table_url("http://mlflow.internal:5000/", "7") == \
        "http://mlflow.internal:5000/#/experiments/7?workflowType=machine_learning"


def test_a_sweeps_trials_view_is_an_experiment_tag_its_link_opens(store, sweep):
    """The UI's shared view: the link's key names the tag holding filter, order and columns."""
    import json

    uri, experiment_id = store
    link = T.share_trials_view(uri, experiment_id, sweep, "val_accuracy", "max", ("schedule",))
    key = link.rsplit("viewStateShareKey=", 1)[1]
    assert link.startswith(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    state = json.loads(MlflowClient(uri).get_experiment(experiment_id).tags[
        f"mlflow.sharedViewState.{key}"])
    assert sweep in state["searchFilter"] and state["orderByKey"] == "metrics.`best_val_accuracy`"
    assert "params.`schedule`" in state["selectedColumns"]
    assert T.ui_url(uri, link) == f"http://127.0.0.1:5000/{link}"


# ------------------------------------------------------------------------------ sweep runs
def test_sweep_run_has_kind_params_and_artifacts(store, sweep, tmp_path):
    uri, _ = store
    run = MlflowClient(uri).get_run(sweep)
    assert run.data.tags[T.TAG_KIND] == T.KIND_SWEEP and run.data.tags[T.TAG_TASK] == "brain"
    assert run.data.params["num_samples"] == "4"
    assert run.data.params["version.mlflow"] == T.environment_params()["version.mlflow"]
    T.set_tags(uri, sweep, {"medsweep.best_trial": "t_00001"})
    T.set_tags(uri, sweep, {"medsweep.best_trial": "t_00002"})  # tags, unlike params, may change
    assert MlflowClient(uri).get_run(sweep).data.tags["medsweep.best_trial"] == "t_00002"
    assert _download(uri, sweep, "split/manifest.csv", tmp_path) == b"path,split\na.png,train\n"
    assert json.loads(_download(uri, sweep, "search_space.json", tmp_path)) == {
        "backbone": ["resnet50"]}


def test_missing_sweep_artifact_creates_no_run(store, tmp_path):
    uri, experiment_id = store
    with pytest.raises(FileNotFoundError, match="nope.json"):
        T.start_sweep_run(uri, experiment_id, run_name="broken", tags={}, params={},
                          artifacts={"x.json": tmp_path / "nope.json"})
    assert not T.find_runs_by_tag(uri, experiment_id, {"mlflow.runName": "broken"})


def test_json_and_table_artifacts_round_trip(store, sweep, tmp_path):
    uri, _ = store
    T.log_json_artifact(uri, sweep, {"path": Path("/x"), "n": 2}, "summary/best.json")
    T.log_table_artifact(uri, sweep, pd.DataFrame({"trial": ["a", "b"], "acc": [0.5, 0.75]}),
                         "summary/trials.csv")
    assert json.loads(_download(uri, sweep, "summary/best.json", tmp_path)) == {"n": 2,
                                                                                "path": "/x"}
    assert _download(uri, sweep, "summary/trials.csv", tmp_path) == b"trial,acc\na,0.5\nb,0.75\n"


def test_reopen_finished_parent_and_relog_same_params(store, tmp_path):
    uri, experiment_id = store
    params = {"task": "brain", "max_epochs": 5, "lr": 0.1}
    run_id = T.start_sweep_run(uri, experiment_id, run_name="resumable", tags={}, params=params,
                               artifacts={})
    client = MlflowClient(uri)
    T.finish_run(uri, run_id)
    assert client.get_run(run_id).info.status == "FINISHED"
    T.reopen_run(uri, run_id)
    assert client.get_run(run_id).info.status == "RUNNING"
    T.log_params(uri, run_id, params)  # a resumed sweep logs its unchanged params again
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        T.log_params(uri, run_id, {"max_epochs": 6})
    T.finish_run(uri, run_id, "KILLED")
    assert client.get_run(run_id).info.status == "KILLED"


# ------------------------------------------------------------------------------ trial runs
def test_trials_nest_under_the_parent_without_duplicates(store, sweep):
    uri, experiment_id = store
    config = {"backbone": "resnet50", "lr_multiplier": 0.5, "data_dir": None,
              "note": "x" * 10_000, "sizes": [1, 2]}
    first = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_00001", "resnet50-1", config)
    again = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_00001", "resnet50-1", config)
    other = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_00002", "resnet50-2", {})
    assert first == again != other
    assert {r.info.run_id for r in T.list_trial_runs(uri, experiment_id, sweep)} == {first, other}
    run = MlflowClient(uri).get_run(first)
    assert run.data.tags[T.PARENT_TAG] == sweep and run.data.tags[T.TAG_KIND] == T.KIND_TRIAL
    # people read Tune's counter (`t01`, as the run name and the console); Tune's own id stays
    # only where the sweep finds the run again
    assert run.data.tags[T.TAG_TRIAL_ID] == "t01"
    assert run.data.tags[T.TAG_TUNE_TRIAL_ID] == "t_00001"
    assert run.data.tags[T.TAG_STATUS] == T.STATUS_RUNNING
    assert run.data.params["lr_multiplier"] == "0.5" and "data_dir" not in run.data.params
    assert run.data.params["sizes"] == "[1, 2]" and len(run.data.params["note"]) < 10_000



def test_a_sweep_older_than_the_tune_id_tag_resumes_into_its_own_runs(store, sweep):
    """Before `medsweep.tune_trial_id`, Tune's id was the `medsweep.trial_id` tag: a resumed old
    sweep finds those runs, and counts them closed, instead of opening duplicates."""
    uri, experiment_id = store
    client = MlflowClient(uri)
    old = client.create_run(experiment_id, run_name="old trial", tags={
        T.PARENT_TAG: sweep, T.TAG_KIND: T.KIND_TRIAL, T.TAG_TRIAL_ID: "t_00007",
        T.TAG_STATUS: T.STATUS_COMPLETED}).info.run_id
    assert T.get_or_create_trial_run(uri, experiment_id, sweep, "t_00007", "x", {}) == old
    assert T.tune_trial_id(client.get_run(old)) == "t_00007"
    new = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_00008", "y", {})
    assert T.tune_trial_id(client.get_run(new)) == "t_00008" != new

def test_values_read_as_a_person_writes_them():
    """4 significant digits, true/false, JSON lists; one spelling, so re-logging is stable."""
    assert T.format_value(0.00012345678) == "0.0001235"
    assert T.format_value(7.297581234) == "7.298" and T.format_value(3.0) == "3"
    assert T.format_value(1234567.0) == "1.235e+06"
    assert T.format_value(False) == "false" and T.format_value(True) == "true"
    assert T.format_value(224) == "224" and T.format_value("brain/3class") == "brain/3class"
    assert T.format_value([0.123456, 0.876544]) == "[0.1235, 0.8765]"
    assert T.format_value({"b": 1.0 / 3, "a": [True, None]}) == \
        '{"a": [true, null], "b": 0.3333}'


def test_epoch_metrics_use_the_epoch_as_step_and_skip_nan(store, sweep):
    uri, experiment_id = store
    run_id = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_metrics", "m", {})
    T.log_epoch_metrics(uri, run_id, {"val_acc": 0.5, "loss": float("nan")}, step=1)
    T.log_epoch_metrics(uri, run_id, {"val_acc": 0.75, "loss": 1.5, "phase": "two",
                                      "lr": float("inf")}, step=2)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == [
        (1, 0.5), (2, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(2, 1.5)]
    assert set(client.get_run(run_id).data.metrics) == {"val_acc", "loss"}


def test_trial_files_then_status_finishes_the_run(store, sweep, tmp_path):
    uri, experiment_id = store
    run_id = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_files", "f", {})
    files = {"best.keras": bytes(range(256)) * 64, "val_probs.npy": b"\x93NUMPY", "history.csv":
             b"epoch,val_acc\n1,0.5\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    logged = T.log_trial_files(uri, run_id, tmp_path, [*files, "val_paths.txt"])
    assert logged == list(files)
    T.set_trial_status(uri, run_id, T.STATUS_STOPPED_EARLY, {"medsweep.best_epoch": 3})
    T.set_trial_status(uri, run_id, T.STATUS_STOPPED_EARLY)  # idempotent
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[T.TAG_STATUS] == "stopped_early"
    assert run.data.tags["medsweep.best_epoch"] == "3"
    for name, data in files.items():
        assert _download(uri, run_id, name, tmp_path / "down") == data


def test_errored_trial_fails_and_its_retry_continues_the_same_run(store, sweep):
    uri, experiment_id = store
    run_id = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_retry", "r", {"seed": 1})
    T.log_epoch_metrics(uri, run_id, {"val_acc": 0.25}, step=1)
    T.set_trial_status(uri, run_id, T.STATUS_ERRORED, {"medsweep.error": "InjectedFault"})
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FAILED"
    retry = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_retry", "r", {"seed": 1})
    assert retry == run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[T.TAG_STATUS] == T.STATUS_RUNNING
    T.log_epoch_metrics(uri, run_id, {"val_acc": 0.5}, step=2)
    T.set_trial_status(uri, run_id, T.STATUS_COMPLETED)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2]


def test_unknown_trial_status_is_refused(store, sweep):
    uri, experiment_id = store
    run_id = T.get_or_create_trial_run(uri, experiment_id, sweep, "t_bad", "b", {})
    with pytest.raises(ValueError, match="not one of"):
        T.set_trial_status(uri, run_id, "done")


def test_open_store_gives_a_new_database_its_tables_before_any_run(tmp_path):
    """The sweep opens the store while Ray starts; afterwards the database is ready to use."""
    import sqlite3

    db = tmp_path / "new.db"
    T.open_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"experiments", "runs", "metrics", "params"} <= tables
