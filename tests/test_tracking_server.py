"""The tracking server set-up (`mlflow/start-server.sh`) for real: a smoke sweep logs to it over
HTTP, and everything is read back through the MLflow client."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from orchestrator import tracking
from orchestrator.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "mlflow" / "start-server.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSWEEP_MLFLOW_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "MEDSWEEP_MLFLOW_BACKEND_URI": f"sqlite:///{tmp / 'server' / 'mlflow.db'}",
            "MEDSWEEP_MLFLOW_ARTIFACTS": str(tmp / "server" / "artifacts"),
            "MEDSWEEP_MLFLOW_WORKERS": "1", **extra}


@pytest.fixture
def server(tmp_path):
    """The script on a free loopback port; yields (http URI, artifacts folder)."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([str(SCRIPT)], env=_server_env(tmp_path, MEDSWEEP_MLFLOW_PORT=str(port)),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "the server did not answer within 120 s"
                time.sleep(0.5)
        yield uri, tmp_path / "server" / "artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_sweep_over_http_is_read_back_whole(server, tmp_path):
    uri, artifacts = server
    # pneumonia: a binary task, so the clinical report's operating point is covered end to end;
    # the ensemble chosen on the validation split (cross-validation logs to the store as the
    # search does, and is covered in tests/test_sweep_cv.py)
    result = run_sweep("pneumonia", profile="smoke", num_samples=2, cv_folds=0,
                       tracking_uri=uri, storage_path=str(tmp_path / "runs"),
                       log=lambda _: None)
    assert result.ui_command == uri

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    children = tracking.list_trial_runs(uri, experiment.experiment_id, result.parent_run_id)
    assert len(children) == 2
    for child in children:
        assert child.data.tags[tracking.PARENT_TAG] == result.parent_run_id
        assert child.info.status == "FINISHED"
        epochs = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in epochs] == list(range(1, len(epochs) + 1)) and epochs
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"best.keras", "val_probs.npy", "val_labels.npy"} <= names

    ensemble = client.get_run(result.ensemble.run_id)
    assert ensemble.data.tags[tracking.PARENT_TAG] == result.parent_run_id
    assert ensemble.info.status == "FINISHED"
    version = client.get_model_version_by_alias("medsweep-pneumonia", "candidate")
    assert version.run_id == ensemble.info.run_id
    assert {"threshold", "test_sensitivity_at_threshold", "temperature"} <= set(
        ensemble.data.metrics)
    # the smoke profile's phantom leaves fewer than 20 test groups: points, no intervals, and
    # the reason on the run, read back over HTTP
    assert "test_sensitivity_at_threshold_ci_low" not in ensemble.data.metrics
    assert "no interval for any test figure" in ensemble.data.tags[tracking.TAG_INTERVAL_NOTE]
    names = {a.path for a in client.list_artifacts(ensemble.info.run_id)}
    assert {"report.html", "threshold_table.csv", "roc_pr_curves.png",
            "test_predictions.csv"} <= names
    # the served model decides at the validated threshold, on the probability it returns
    mlflow.set_tracking_uri(uri)
    spec = mlflow.pyfunc.load_model("models:/medsweep-pneumonia@candidate") \
        .unwrap_python_model().spec["serving"]
    positive = spec["positive_class"]
    assert version.tags["positive_class"] == positive
    assert spec["threshold"] == pytest.approx(ensemble.data.metrics["threshold"], abs=1e-6)
    served = pd.read_csv(client.download_artifacts(ensemble.info.run_id, "test_predictions.csv"))
    at_threshold = served[f"prob_{positive}"] >= spec["threshold"]
    assert (served["decision"] == positive).tolist() == at_threshold.tolist()
    assert (served["refer"] == (served["confidence"] < spec["refer_cut"])).all()
    # The files really sit in the server's artifact store, sent there over HTTP.
    assert list(artifacts.rglob("best.keras")) and list(artifacts.rglob("MLmodel"))


@pytest.mark.parametrize("env,needle", [
    ({"MEDSWEEP_MLFLOW_HOST": "0.0.0.0"}, "not a loopback address"),
    ({"MEDSWEEP_MLFLOW_PORT": "http"}, "MEDSWEEP_MLFLOW_PORT=http"),
    ({"MEDSWEEP_MLFLOW_BACKEND_URI": "mlflow.db"}, "MEDSWEEP_MLFLOW_BACKEND_URI=mlflow.db"),
])
def test_the_script_refuses_unsafe_or_bad_settings_in_one_line(env, needle, tmp_path):
    proc = subprocess.run([str(SCRIPT)], env=_server_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
