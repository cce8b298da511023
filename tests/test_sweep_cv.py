"""Cross-validation of the finalists, end to end: the CLI smoke sweep's cross-validation (2
configurations x 2 folds; tests/conftest.py), whose ensemble is chosen on out-of-fold
predictions and predicts the test split once with every fold model; and the out-of-fold
assembly itself, as a property. (Killed in the cross-validation stage and resumed:
tests/test_sweep.py, with the other kill/resume paths.)"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import Run

from orchestrator import tracking
from orchestrator.data.splits import assign_folds, assign_splits
from orchestrator.data.table import make_table
from orchestrator.ensemble.sources import HeldOut
from orchestrator.errors import DataError
from orchestrator.tta.pool import Candidate, Scored
from tasks import get_task



@settings(max_examples=40, deadline=None)
@given(n_groups=st.integers(6, 40), folds=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_property_every_non_test_image_gets_exactly_one_out_of_fold_prediction(n_groups, folds,
                                                                               seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    rows = [{"path": f"/d/{g:03d}_{i}.png", "label": "ab"[g % 2], "source_label": "ab"[g % 2],
             "group": f"g{g}", "split": ""} for g, size in enumerate(sizes) for i in range(size)]
    task = get_task("folder").with_classes(("a", "b"))
    try:
        table = assign_folds(assign_splits(make_table(rows), task, seed), folds, seed)
    except DataError:
        return  # too few images for that many folds: refused with a clear error, never wrong
    pool = table[table["split"] != "test"].reset_index(drop=True)
    models, positions, scored = {}, {}, {}
    for config in ("c1", "c2"):
        models[config] = []
        for k in range(folds):
            held = np.flatnonzero(pool["fold"].to_numpy() == str(k))
            name = f"{config}-f{k}"
            models[config].append(Candidate(name, "", 32, images_key=(32, k)))
            positions[name] = held
            # each fold model "predicts" the index of the image, so the assembly is checkable
            probs = np.zeros((3, len(held), 2), np.float32)
            probs[:, :, 0] = held
            scored[name] = Scored(name, probs)
    held = HeldOut("out-of-fold", models, {}, positions, np.zeros(len(pool), int), {})
    for config, oof in held.assemble(scored).items():
        assert oof.shape == (3, len(pool), 2) and not np.isnan(oof).any()
        assert (oof[:, :, 0] == np.arange(len(pool))).all()  # each image once, in its place
    missing = dict(scored, **{"c2-f0": Scored("c2-f0", None, "gone")})
    assert list(held.assemble(missing)) == ["c1"]  # a configuration missing a fold drops out


@dataclass(frozen=True)
class RecordedCv:
    """What the CLI smoke sweep (tests/conftest.py: search, 2 finalists x 2 folds, ensemble)
    recorded, read back from its store: every figure below is the recorded one."""

    uri: str
    parent_run_id: str
    ensemble: Run
    spec: dict  # the registered model's ensemble.json

    @property
    def members(self) -> list[str]:
        return json.loads(self.ensemble.data.params["members"])

    @property
    def sets(self) -> dict:
        """The prediction sets' fit as the served model reads it (`SetFit.to_dict`)."""
        return self.spec["serving"]["sets"]


@pytest.fixture(scope="module")
def cv_sweep(cli_smoke_sweep, tmp_path_factory):
    """The CLI smoke sweep's cross-validation stage and out-of-fold ensemble, as recorded; a
    local Ray for the rebuilds below."""
    from orchestrator.cluster import connect_ray

    cwd, _, _ = cli_smoke_sweep
    uri = f"sqlite:///{cwd / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("medsweep-brain")
    (parent,) = tracking.find_runs_by_tag(uri, experiment.experiment_id,
                                          {tracking.TAG_KIND: tracking.KIND_SWEEP})
    (ensemble,) = tracking.find_runs_by_tag(uri, experiment.experiment_id,
                                            {tracking.TAG_KIND: tracking.KIND_ENSEMBLE})
    (version,) = [v for v in client.search_model_versions("name='medsweep-brain'")
                  if v.run_id == ensemble.info.run_id]
    model = client.get_logged_model(version.source.rsplit("/", 1)[-1])  # models:/m-...
    spec_file = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{model.artifact_location}/artifacts/ensemble.json",
        dst_path=str(tmp_path_factory.mktemp("cv-model")), tracking_uri=uri)
    spec = json.loads(Path(spec_file).read_text())
    connect_ray(None, lambda _: None)
    yield RecordedCv(uri, parent.info.run_id, ensemble, spec), cwd


@pytest.mark.slow
def test_a_smoke_cv_sweep_retrains_two_finalists_on_two_folds(cv_sweep):
    result, _ = cv_sweep
    uri = result.uri
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert (parent.data.params["cv_folds"], parent.data.params["cv_top"]) == ("2", "2")
    runs = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id,
                                    kind=tracking.KIND_CV_TRIAL)
    cells = sorted((r.data.tags[tracking.TAG_FINALIST], r.data.tags[tracking.TAG_FOLD])
                   for r in runs)
    finalists = sorted({f for f, _ in cells})
    assert len(finalists) == 2 and cells == [(f, k) for f in finalists for k in ("0", "1")]
    search = {r.data.tags[tracking.TAG_TRIAL_ID] for r in tracking.list_trial_runs(
        uri, parent.info.experiment_id, result.parent_run_id)}
    assert set(finalists) <= search  # finalists are search trials, not extra ones
    for run in runs:
        assert run.data.tags[tracking.TAG_STATUS] == "completed"
        assert run.data.params["cv_fold"] == run.data.tags[tracking.TAG_FOLD]
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"best.keras", "val_probs.npy", "val_paths.txt"} <= files
    assert "cv_runs.csv" in {a.path for a in client.list_artifacts(result.parent_run_id)}


@pytest.mark.slow
def test_the_ensemble_is_chosen_out_of_fold_and_tests_once_with_every_fold_model(cv_sweep,
                                                                                  tmp_path):
    result, _ = cv_sweep
    run, spec = result.ensemble, result.spec
    client = mlflow.MlflowClient(result.uri)
    assert run.data.params["chosen_on"] == "out-of-fold"
    assert run.data.params["models_per_member"] == "2"
    scoring = pd.read_csv(client.download_artifacts(run.info.run_id, "scoring.csv",
                                                    str(tmp_path)))
    held = scoring[scoring["split"] == "held_out"]
    assert len(held) == 4  # 2 finalists x 2 fold models, each on its own fold
    manifest = pd.read_csv(client.download_artifacts(result.parent_run_id, "manifest.csv",
                                                     str(tmp_path / "m")))
    held_out_images = int((manifest["split"] != "test").sum())  # every one
    tested = scoring[scoring["split"] == "test"]
    assert len(tested) == len(set(tested["model"]))  # every model predicted the test split once
    assert all(len(tested[tested["model"].str.startswith(m)]) == 2 for m in result.members)
    assert len(spec["members"]) == 2 * len(result.members)  # a member is its fold models
    assert sum(m["weight"] for m in spec["members"]) == pytest.approx(1.0)
    html = next(Path(client.download_artifacts(run.info.run_id, "report.html",
                                               str(tmp_path / "r"))).parent.rglob("report.html"))
    text = html.read_text()
    assert "out-of-fold predictions of the cross-validated finalists" in text
    assert "Out-of-fold predictions (where every choice was made)" in text
    # the prediction sets' quantile: on every out-of-fold prediction, versioned in the spec
    from orchestrator.clinical.conformal import coverage_range

    sets = result.sets  # fitted on every held-out image's out-of-fold prediction
    assert sets["cases"] == [held_out_images]
    assert "The held-out scores come from the fold models" in text
    metrics = run.data.metrics
    n_test = int((manifest["split"] == "test").sum())
    low, _ = coverage_range(n_test, held_out_images, sets["coverage"])
    print(f"out-of-fold prediction sets: quantile {sets['quantiles'][0]:.4f} on "
          f"{sets['cases'][0]} cases; test coverage {metrics['test_set_coverage']:.3f} on {n_test} "
          f"(99% range from {low:.3f}), mean set size {metrics['test_set_size_mean']:.2f}")
    assert metrics["test_set_coverage"] >= low


@pytest.mark.slow
def test_permuting_the_test_labels_changes_no_choice_under_cv(
        cv_sweep, rebuild_with_permuted_test_labels, tmp_path):
    result, cwd = cv_sweep
    # rebuilt on a copy of the store (the same artifacts): the sweep's own records stay as
    # tests/test_sweep.py reads them
    copy = tmp_path / "mlflow.db"
    shutil.copy(cwd / "mlflow" / "mlflow.db", copy)
    again = rebuild_with_permuted_test_labels(result.parent_run_id, f"sqlite:///{copy}")
    first = result.ensemble.data
    assert (again.policy, list(again.members), list(again.weights)) == (
        first.params["tta_policy"], result.members, json.loads(first.params["member_weights"]))
    assert again.temperature == pytest.approx(first.metrics["temperature"], rel=1e-6)
    ((_, sets),) = again.sets
    assert again.chosen_on == "out-of-fold" and sets.to_dict() == result.sets
    loss = first.metrics["test_loss"]
    assert again.table.set_index("model").loc["ensemble", "test_loss"] != pytest.approx(loss)
