"""The multi-head task across the stack: a smoke sweep on its phantom with two seeds of the
finalist, cross-validated, ensembled on out-of-fold predictions for every head, reported,
registered and served (image bytes in, one block of columns per head out)."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from orchestrator import tracking
from orchestrator.data.splits import read_manifest
from orchestrator.sweep.runner import run_sweep
from test_ensemble_build import _model_server  # a real `mlflow models serve`

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def multihead_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihead")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_sweep("multihead", profile="smoke", max_epochs=3, cv_top=1, replicates=2,
                       storage_path=str(root / "runs"), tracking_uri=uri,
                       space_overrides={"phantom_per_class": 20, "lr_multiplier": 10.0,
                                        "frequency_stream": [False, True]},
                       log=lambda _: None)
    yield result, uri, root


@pytest.mark.slow
def test_trials_carry_per_head_metrics_and_the_sweep_metric(multihead_sweep):
    result, uri, _ = multihead_sweep
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["metric"] == "val_mean_skill"
    assert parent.data.params["replicates"] == "2"
    trials = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id)
    assert trials
    for run in trials:
        keys = set(run.data.metrics)
        assert {"val_mean_skill", "best_val_mean_skill", "val_shape_balanced_accuracy",
                "val_texture_macro_f1", "val_size_mae", "val_size_r2"} <= keys
    assert "best_val_mean_skill" in result.leaderboard.columns


@pytest.mark.slow
def test_two_seeds_of_the_finalist_are_two_out_of_fold_candidates(multihead_sweep, tmp_path):
    result, uri, _ = multihead_sweep
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    cv = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id,
                                  kind=tracking.KIND_CV_TRIAL)
    cells = sorted((r.data.tags[tracking.TAG_REPLICATE], r.data.tags[tracking.TAG_FOLD])
                   for r in cv)
    assert cells == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    seeds = {r.data.tags[tracking.TAG_REPLICATE]: int(r.data.params["seed"]) for r in cv}
    assert seeds["1"] == seeds["0"] + 1000
    report = result.ensemble
    assert report is not None and report.chosen_on == "out-of-fold"
    scoring = pd.read_csv(client.download_artifacts(report.run_id, "scoring.csv",
                                                    str(tmp_path)))
    held = set(scoring.loc[scoring["split"] == "held_out", "model"])
    finalist = cv[0].data.tags[tracking.TAG_FINALIST]
    assert held == {f"{finalist}-f0", f"{finalist}-f1", f"{finalist}-r1-f0",
                    f"{finalist}-r1-f1"}


@pytest.mark.slow
def test_the_report_shows_every_head_and_the_registered_model_answers_per_head(
        multihead_sweep, tmp_path):
    result, uri, _ = multihead_sweep
    report = result.ensemble
    client = mlflow.MlflowClient(uri)
    run = client.get_run(report.run_id)
    for key in ("test_mean_skill", "test_shape_balanced_accuracy",
                "test_texture_balanced_accuracy", "test_size_mae", "shape_temperature",
                "texture_refer_cut"):
        assert key in run.data.metrics, key
    # 20 phantoms per class leave a test split of fewer than 20 groups (objects): every head's
    # figure is a point, with no interval, and the run says why
    assert not [k for k in run.data.metrics if k.startswith("test_") and "_ci_" in k]
    assert re.fullmatch(r"test holds \d+ groups \(< 20\): no interval for any test figure",
                        run.data.tags[tracking.TAG_INTERVAL_NOTE])
    files = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"report.html", "scatter_size.png", "confusion_matrix_shape.png",
            "confusion_matrix_texture.png", "test_predictions.csv"} <= files
    html = Path(client.download_artifacts(report.run_id, "report.html", str(tmp_path)))
    text = html.read_text()
    for head in ("Head shape", "Head texture", "Head size"):
        assert head in text
    assert "SYNTHETIC PHANTOM DATA" in text
    assert "[no interval]" in text and not re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", text)

    model = mlflow.pyfunc.load_model(f"models:/{report.registered_name}@candidate")
    folder = Path(client.download_artifacts(result.parent_run_id, "manifest.csv",
                                            str(tmp_path / "m"))).parent
    client.download_artifacts(result.parent_run_id, "manifest.json", str(folder))
    recorded, _ = read_manifest(folder / "manifest.csv")
    phantom = Path(recorded["path"].iloc[0])
    answer = model.predict(pd.DataFrame({"image": [phantom.read_bytes()] * 2}))
    shape = [c for c in answer.columns if c.startswith("shape_prob_")]
    texture = [c for c in answer.columns if c.startswith("texture_prob_")]
    assert len(shape) == 4 and len(texture) == 3
    np.testing.assert_allclose(answer[shape].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(answer[texture].sum(axis=1), 1.0, atol=1e-5)
    assert set(answer["shape_decision"]) <= {"disc", "square", "triangle", "ring"}
    assert answer["size_value"].between(0, 200).all()
    assert {"shape_refer", "texture_confidence"} <= set(answer.columns)


@pytest.mark.slow
def test_mlflow_models_serve_answers_every_head_as_the_registered_model(multihead_sweep,
                                                                         tmp_path):
    """A real `mlflow models serve`: base64 images in over HTTP, a block of columns per head
    out, the same numbers as the registered model in this process."""
    result, uri, _ = multihead_sweep
    name = result.ensemble.registered_name
    client = mlflow.MlflowClient(uri)
    folder = Path(client.download_artifacts(result.parent_run_id, "manifest.csv",
                                            str(tmp_path))).parent
    client.download_artifacts(result.parent_run_id, "manifest.json", str(folder))
    recorded, _ = read_manifest(folder / "manifest.csv")
    images = [Path(p).read_bytes() for p in recorded["path"].iloc[:3]]
    payload = {"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(b).decode()] for b in images]}}
    with _model_server(uri, f"models:/{name}@candidate", payload) as (_, status, answer):
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        mlflow.set_tracking_uri(uri)
        local = mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(
            pd.DataFrame({"image": images}))
        assert list(served.columns) == list(local.columns)
        numbers = [c for c in local.columns if c.endswith("_value") or "_prob_" in c]
        np.testing.assert_allclose(served[numbers].to_numpy(float),
                                   local[numbers].to_numpy(float), rtol=1e-5, atol=1e-6)
        for head in ("shape", "texture"):
            assert served[f"{head}_decision"].tolist() == local[f"{head}_decision"].tolist()
