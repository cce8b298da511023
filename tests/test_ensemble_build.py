"""The final ensemble end to end: actor pool, validation-only choice, MLflow run, pyfunc model,
registry alias, and `mlflow models serve` answering predictions."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import ray

from orchestrator import tracking
from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.phantoms import write_phantom
from orchestrator.ensemble.build import build_ensemble
from orchestrator.errors import ConfigError
from orchestrator.sweep.runner import run_sweep
from orchestrator.tta.policies import get_policy
from orchestrator.tta.pool import Candidate, ScoringPool
from orchestrator.tta.predict import tta_predict, tta_predict_each
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
QUIET = dict(log=lambda _: None)
OVERRIDES = {"resolution": 48, "phantom_per_class": 30, "epochs": 3, "lr_multiplier": 10.0}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One small sweep (3 trials) with its ensemble chosen on the holdout validation split
    (`--cv-folds 0`), shared by the tests below; tests/test_sweep_cv.py covers the CV path."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_sweep("brain", profile="smoke", num_samples=3, max_epochs=3, cv_folds=0,
                       storage_path=str(root / "runs"), tracking_uri=uri,
                       space_overrides=OVERRIDES, **QUIET)
    yield result, uri, root
    ray.shutdown()


def _member_file(uri: str, result, trial_id: str, dst: Path) -> str:
    """The member's own best model, straight from its trial run (not from the pyfunc)."""
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_run(result.parent_run_id).info.experiment_id
    (run,) = tracking.find_runs_by_tag(uri, experiment_id, {tracking.TAG_TRIAL_ID: trial_id})
    return client.download_artifacts(run.info.run_id, "best.keras", str(dst))


def _prepared():
    return prepare_dataset(get_task("brain"), None, 48, phantom_per_class=30, **QUIET)


def test_the_sweep_ends_with_an_ensemble_run_and_a_registered_model(swept):
    result, uri, _ = swept
    report = result.ensemble
    assert report is not None and report.members
    assert sum(report.weights) == pytest.approx(1.0)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.PARENT_TAG] == result.parent_run_id
    assert run.data.tags[tracking.TAG_KIND] == tracking.KIND_ENSEMBLE
    for key in ("val_accuracy", "test_accuracy", "test_balanced_accuracy", "test_macro_f1"):
        assert key in run.data.metrics
    files = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"comparison.csv", "classification_report.csv", "confusion_matrix.png",
            "report.html", "roc_pr_curves.png", "reliability_diagram.png",
            "trial_comparison.png", "test_metrics_with_ci.csv",
            "review_low_confidence.csv"} <= files
    assert any(f.startswith("gradcam_") for f in files)
    for key in ("test_accuracy_ci_low", "test_accuracy_ci_high", "temperature",
                "test_ece_calibrated"):
        assert key in run.data.metrics
    low, high = run.data.metrics["test_accuracy_ci_low"], run.data.metrics["test_accuracy_ci_high"]
    assert low <= run.data.metrics["test_accuracy"] <= high
    assert list(report.table["model"]) == ["ensemble", "best_single", "top2_soft_vote"]
    for metric in ("accuracy", "macro_f1", "loss"):  # every reported test figure has its interval
        t = report.table
        assert (t[f"test_{metric}_ci_low"] <= t[f"test_{metric}"] + 1e-12).all()
        assert (t[f"test_{metric}"] <= t[f"test_{metric}_ci_high"] + 1e-12).all()
    # every trial's run carries its training curves
    for trial in tracking.list_trial_runs(uri, run.info.experiment_id, result.parent_run_id):
        assert "training_curves.png" in {a.path for a in client.list_artifacts(
            trial.info.run_id)}
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    assert version.run_id == report.run_id


def test_pyfunc_on_image_paths_equals_the_in_process_ensemble(swept, tmp_path):
    result, uri, _ = swept
    report = result.ensemble
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    data = _prepared()
    paths = data.paths("test")[:12]
    served = model.predict(pd.DataFrame({"path": paths}))
    assert list(served.columns) == list(get_task("brain").classes)
    x_test = data.arrays("test")[0][:12]
    transforms = get_policy(report.policy)
    expected = 0
    for i, (member, weight) in enumerate(zip(report.members, report.weights)):
        keras_file = _member_file(uri, result, member, tmp_path / str(i))
        expected = expected + weight * tta_predict(keras.models.load_model(keras_file), x_test,
                                                   transforms)
    np.testing.assert_allclose(served.to_numpy(), expected, atol=1e-5)
    raw_rgb = x_test  # uint8 arrays are accepted too
    np.testing.assert_allclose(model.predict(raw_rgb).to_numpy(), expected, atol=1e-4)
    with pytest.raises(Exception, match="nope.jpg"):
        model.predict(pd.DataFrame({"path": ["/nowhere/nope.jpg"]}))


def test_actor_pool_probabilities_equal_a_direct_call(swept, tmp_path):
    result, uri, _ = swept
    member = result.ensemble.members[0]
    keras_file = _member_file(uri, result, member, tmp_path)
    x_val = _prepared().arrays("val")[0]
    transforms = get_policy("standard6")
    bogus = Candidate("missing", str(tmp_path / "missing.keras"), 48)
    with ScoringPool(2, **QUIET) as pool:
        scored = pool.score([Candidate(member, keras_file, 48), bogus], {48: x_val}, transforms)
    direct = tta_predict_each(keras.models.load_model(keras_file), x_val, transforms)
    np.testing.assert_allclose(scored[member].probs, direct, atol=1e-5)
    assert scored["missing"].probs is None and "missing.keras" in scored["missing"].error


def test_permuting_the_test_labels_changes_no_choice(swept,
                                                      rebuild_with_permuted_test_labels):
    """The recorded split is the only source of labels: permute the test labels in the sweep's
    manifest (the files stay as they are), and no choice moves."""
    result, uri, _ = swept
    again = rebuild_with_permuted_test_labels(result.parent_run_id, uri)
    first = result.ensemble
    assert (again.policy, again.members, again.weights) == (
        first.policy, first.members, first.weights)
    assert again.temperature == first.temperature  # fitted on validation only
    # ...while the test figures, which do see the labels, change
    ens_test = first.table.set_index("model").loc["ensemble", "test_loss"]
    assert again.table.set_index("model").loc["ensemble", "test_loss"] != pytest.approx(ens_test)


def test_unknown_sweep_run_is_a_clear_error(swept):
    _, uri, _ = swept
    with pytest.raises(ConfigError, match="deadbeef"):
        build_ensemble("deadbeef" * 4, tracking_uri=uri, **QUIET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_predictions(swept):
    _, uri, _ = swept
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m",
                               "models:/medsweep-brain@candidate", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        paths = _prepared().paths("test")[:3]
        body = json.dumps({"dataframe_split": {"columns": ["path"],
                                               "data": [[p] for p in paths]}}).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert answer is not None, "the model server never answered"
        rows = answer["predictions"]
        assert len(rows) == 3
        assert all(abs(sum(r.values()) - 1) < 1e-4 for r in rows)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_default_policies_are_the_registered_ones_cheapest_first():
    from orchestrator.ensemble.build import DEFAULT_POLICIES
    from orchestrator.tta.policies import POLICIES

    assert DEFAULT_POLICIES == tuple(POLICIES)
    assert [len(POLICIES[p]) for p in DEFAULT_POLICIES] == [1, 6, 17]


def test_cli_unknown_sweep_run_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run", "nope",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bad_clinical_option_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run", "x",
                           "--resamples", "100"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and ">= 1000" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_rebuilds_with_mc_dropout_and_prints_intervals(swept):
    """Last in this module: it registers a new version under the same alias."""
    result, uri, root = swept
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run",
                           result.parent_run_id, "--tracking-uri", uri, "--tta", "none",
                           "--top-k", "2", "--mc-dropout", "3"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test [95% CI]" in proc.stdout
    assert "temperature (fitted on validation predictions)" in proc.stdout
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    run = client.get_run(version.run_id)
    assert version.run_id != result.ensemble.run_id
    assert run.data.params["tta_policy"] == "none"
    assert "test_mc_dropout_mean_entropy" in run.data.metrics


def test_the_ensemble_refuses_data_that_changed_after_the_sweep(tmp_path):
    """The ensemble rebuilds the split from the sweep's recorded manifest, never re-splits, and
    one changed image is enough to refuse: a clear line, no ensemble run."""
    data = write_phantom(get_task("brain"), tmp_path / "brain", per_class=12, seed=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep("brain", profile="smoke", data_dir=str(data), num_samples=1, cv_folds=0,
                       max_epochs=1, storage_path=str(tmp_path / "runs"), tracking_uri=uri,
                       ensemble=False, **QUIET)
    victim = sorted((data / "Testing" / "glioma").glob("*.jpg"))[0]
    image = cv2.imread(str(victim))
    cv2.imwrite(str(victim), 255 - image)  # the same name, another picture
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run",
                           result.parent_run_id, "--tracking-uri", uri], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "the data changed since the sweep recorded it" in line
    assert "Testing/glioma/" + victim.name in line and "Traceback" not in proc.stderr
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id])
    assert not [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_ENSEMBLE]
