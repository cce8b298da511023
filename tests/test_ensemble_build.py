"""The final ensemble end to end: actor pool, validation-only choice, MLflow run, pyfunc model,
registry alias, and `mlflow models serve` answering predictions."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from orchestrator import tracking
from orchestrator.clinical.calibration import apply_temperature
from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.phantoms import default_phantom_dir, write_phantom
from orchestrator.ensemble.build import build_ensemble
from orchestrator.errors import ConfigError
from orchestrator.sweep.runner import run_sweep
from orchestrator.tta.policies import get_policy
from orchestrator.tta.pool import Candidate, ScoringPool

from conftest import user_env
from test_console import RAY_TOKEN_NOTICE, TF_START_UP  # what a quiet command never prints
from orchestrator.tta.predict import tta_predict, tta_predict_each
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
QUIET = dict(log=lambda _: None)
# 34 per class: a test split of 21 images, each its own group, so at least the 20 groups a
# bootstrap interval needs (bootstrap.MIN_GROUPS); below that the figures have none
PER_CLASS = 34
OVERRIDES = {"resolution": 48, "phantom_per_class": PER_CLASS, "epochs": 3,
             "lr_multiplier": 10.0}


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


def _member_file(uri: str, result, trial_id: str, dst: Path) -> str:
    """The member's own best model, straight from its trial run (not from the pyfunc)."""
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_run(result.parent_run_id).info.experiment_id
    (run,) = tracking.find_runs_by_tag(uri, experiment_id, {tracking.TAG_TRIAL_ID: trial_id})
    return client.download_artifacts(run.info.run_id, "best.keras", str(dst))


def _prepared():
    return prepare_dataset(get_task("brain"), None, 48, phantom_per_class=PER_CLASS, **QUIET)


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
    for key in ("temperature", "test_ece_calibrated"):
        assert key in run.data.metrics
    # 21 test groups: every figure has its interval, unless that interval is zero-width away
    # from 0 and 1 (a small model that answers one class for every case scores exactly 1/3 on
    # every class-stratified resample), which is no interval, said in the run's tag
    intervals = report.intervals
    assert (intervals.groups == 21).all()
    ens = intervals[intervals.model == "ensemble"].set_index("metric")
    metrics = run.data.metrics
    for metric, row in ens.iterrows():
        if not np.isfinite(row.point):  # e.g. the accuracy of no accepted case: not logged
            assert f"test_{metric}" not in metrics, metric
        elif row.note:
            assert row.note == "zero-width interval: no interval", metric
            assert f"test_{metric}_ci_low" not in metrics and metric in run.data.tags[
                tracking.TAG_INTERVAL_NOTE]
        else:
            assert metrics[f"test_{metric}_ci_low"] <= metrics[f"test_{metric}"] + 1e-12
            assert metrics[f"test_{metric}"] <= metrics[f"test_{metric}_ci_high"] + 1e-12
    assert (ens.note == "").any() and "test_loss_ci_low" in metrics
    assert (tracking.TAG_INTERVAL_NOTE in run.data.tags) == (intervals.note != "").any()
    assert list(report.table["model"]) == ["ensemble", "best_single", "top2_soft_vote"]
    for metric in ("accuracy", "macro_f1", "loss"):  # every test figure: interval or reason
        t = report.table
        sound = t[f"test_{metric}_ci_low"].notna()
        assert (t.loc[sound, f"test_{metric}_ci_low"] <= t.loc[sound, f"test_{metric}"]
                + 1e-12).all()
        assert (t.loc[sound, f"test_{metric}"] <= t.loc[sound, f"test_{metric}_ci_high"]
                + 1e-12).all()
        noted = intervals[(intervals.metric == metric) & (intervals.note != "")]
        assert set(t.loc[~sound, "model"]) == set(noted.model), metric
    # every trial's run carries its training curves
    for trial in tracking.list_trial_runs(uri, run.info.experiment_id, result.parent_run_id):
        assert "training_curves.png" in {a.path for a in client.list_artifacts(
            trial.info.run_id)}
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    assert version.run_id == report.run_id
    _assert_sets_cover_as_promised(report, metrics)


def _assert_sets_cover_as_promised(report, metrics: dict) -> None:
    """The prediction sets' quantile fitted on validation, their test coverage within the
    99% range the guarantee gives for this many test and held-out cases (beta-binomial: the
    binomial spread of the test cases widened by the held-out draw)."""
    from orchestrator.clinical.conformal import coverage_range

    ((name, sets),) = report.sets
    assert name == "" and sets.coverage == 0.90 and not sets.conditional
    assert sets.cases == (report.held_out_images,) and sets.every_class == ()
    assert metrics["set_quantile"] == sets.quantiles[0]
    assert metrics["set_coverage_nominal"] == 0.90
    coverage, n_test = metrics["test_set_coverage"], 21
    low, high = coverage_range(n_test, sets.cases[0], 0.90, level=0.99)
    print(f"phantom prediction sets: quantile {sets.quantiles[0]:.4f} on {sets.cases[0]} "
          f"validation cases; test coverage {coverage:.3f} (99% range [{low:.3f}, {high:.3f}]), "
          f"mean set size {metrics['test_set_size_mean']:.2f}")
    assert coverage >= low
    if sets.quantiles[0] > 0.0:
        assert coverage <= high
    else:  # right on > 90% of validation cases: one class a set, coverage is the accuracy
        assert coverage == metrics["test_accuracy"] and metrics["test_set_size_mean"] == 1.0
    for k in ("test_set_size_mean", "test_set_coverage_glioma", "test_set_size_1_share"):
        assert k in metrics, k


def _in_process(uri, result, tmp_path, x_test) -> np.ndarray:
    """The members' weighted TTA vote, computed here from each member's own trial model."""
    report = result.ensemble
    transforms = get_policy(report.policy)
    expected = 0
    for i, (member, weight) in enumerate(zip(report.members, report.weights)):
        keras_file = _member_file(uri, result, member, tmp_path / str(i))
        expected = expected + weight * tta_predict(keras.models.load_model(keras_file), x_test,
                                                   transforms)
    return expected


def test_pyfunc_answers_every_input_form_as_the_in_process_ensemble(swept, tmp_path):
    result, uri, _ = swept
    report = result.ensemble
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    assert model.metadata.get_input_schema().input_names() == ["image", "path"]
    assert model.metadata.get_output_schema().input_names()[-7:] == [
        "decision", "confidence", "refer", "prediction_set", "set_size", "out_of_distribution",
        "ood_score"]
    assert model.input_example is not None
    # what a server with its own environment installs: every library the served code imports
    needs = Path(mlflow.pyfunc.get_model_dependencies("models:/medsweep-brain@candidate"))
    assert {"tensorflow", "opencv-python-headless", "scipy", "pillow", "pydicom", "mlflow"} <= {
        line.split("==")[0] for line in needs.read_text().splitlines()}
    data = _prepared()
    paths = data.paths("test")[:12]
    served = model.predict(pd.DataFrame({"path": paths}))
    classes = list(get_task("brain").classes)
    probs = [f"prob_{c}" for c in classes]
    assert list(served.columns) == probs + ["decision", "confidence", "refer",
                                            "prediction_set", "set_size",
                                            "out_of_distribution", "ood_score"]
    x_test = data.arrays("test")[0][:12]
    calibrated = apply_temperature(_in_process(uri, result, tmp_path, x_test),
                                   report.temperature)
    np.testing.assert_allclose(served[probs].to_numpy(), calibrated, atol=1e-5)
    assert served["decision"].tolist() == [classes[k] for k in calibrated.argmax(axis=1)]
    np.testing.assert_allclose(served["confidence"], calibrated.max(axis=1), atol=1e-5)
    assert served["refer"].tolist() == ((served["confidence"] < report.refer_cut)
                                        | served["out_of_distribution"]).tolist()
    assert served["out_of_distribution"].tolist() == (served["ood_score"]
                                                      > report.ood.cut).tolist()
    ((_, sets),) = report.sets  # the set: classes by probability while the mass above <= q
    assert served["prediction_set"].tolist() == [_aps_set(p, sets.quantiles[0], classes)
                                                 for p in calibrated]
    assert served["set_size"].tolist() == [len(json.loads(s)) for s in served["prediction_set"]]
    # the same images as encoded files (bytes, or base64 text) and as uint8 tensors
    files = [Path(p).read_bytes() for p in paths]
    as_bytes = model.predict(pd.DataFrame({"image": files}))
    as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(f).decode()
                                                    for f in files]}))
    as_tensor = model.predict({"image": x_test})  # RGB, already at the model's resolution
    for other in (as_bytes, as_text):
        pd.testing.assert_frame_equal(other, served)
    np.testing.assert_allclose(as_tensor[probs].to_numpy(), calibrated, atol=1e-4)


def _aps_set(p: np.ndarray, quantile: float, classes: list[str]) -> str:
    """The served set, written out: classes by probability while the mass above is <= q."""
    order = np.argsort(-p, kind="stable")
    above = np.cumsum(p[order]) - p[order]
    return json.dumps([classes[k] for k, a in zip(order, above) if a <= quantile + 1e-9])


@pytest.mark.parametrize("bad, message", [
    (pd.DataFrame({"image": [b"GIF89a-not-really"]}), "row 0: 17 bytes that are not an image"),
    ({"image": np.zeros((1, 8, 8, 3), dtype=np.float32) + 0.5}, "row 0: pixels must be uint8"),
    (pd.DataFrame({"path": ["/nowhere/nope.jpg"]}),
     "row 0: /nowhere/nope.jpg cannot be read: no such file"),
])
def test_pyfunc_bad_input_is_an_mlflow_error_naming_the_row(swept, bad, message):
    _, uri, _ = swept
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    with pytest.raises(mlflow.exceptions.MlflowException, match=re.escape(message)):
        model.predict(bad)


def test_the_registered_version_carries_its_card_and_tags(swept):
    result, uri, _ = swept
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    card = version.description
    assert card.startswith("MedSweep ensemble for brain/3class: test accuracy ")
    for text in ("SYNTHETIC PHANTOM DATA", "## Data", "## Members", result.ensemble.members[0],
                 "## Performance", "T = ", "## Prediction sets", "- set_coverage: ",
                 "Intended use and limits", result.parent_run_id):
        assert text in card, text
    tags = version.tags
    assert tags["task"] == "brain/3class" and tags["sweep_run"] == result.parent_run_id
    assert len(tags["data_fingerprint"]) == 32 and len(tags["test_fingerprint"]) == 32
    assert re.fullmatch(r"\d\.\d{3} (\[\d\.\d{3}, \d\.\d{3}\]|\[no interval\])",
                        tags["test_accuracy"])
    if tags["test_accuracy"].endswith("[no interval]"):  # zero-width: the card says so
        assert re.search(r"^- Zero-width interval: no interval for accuracy\b", card, re.M)
    assert client.get_registered_model("medsweep-brain").description
    preds = pd.read_csv(client.download_artifacts(result.ensemble.run_id, "test_predictions.csv"))
    data = _prepared()
    assert len(preds) == len(data.paths("test"))
    assert not any(Path(p).is_absolute() for p in preds["path"])
    # the served model's answer for a test image is the one the run recorded for it
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    served = model.predict(pd.DataFrame({"path": [str(data.root / p) for p in preds["path"][:6]]}))
    np.testing.assert_allclose(served["confidence"], preds["confidence"][:6], atol=1e-5)
    assert served["decision"].tolist() == preds["decision"][:6].tolist()
    assert served["prediction_set"].tolist() == preds["prediction_set"][:6].tolist()
    review = pd.read_csv(client.download_artifacts(result.ensemble.run_id,
                                                   "review_low_confidence.csv"))
    assert not any(Path(p).is_absolute() for p in review["path"])
    recorded = preds.set_index("path")["confidence"]
    np.testing.assert_allclose(review["confidence"], recorded[review["path"]], atol=1e-6)
    page = Path(client.download_artifacts(result.ensemble.run_id, "report.html")).read_text()
    sweep_name = client.get_run(result.parent_run_id).info.run_name
    assert f"sweep {sweep_name} (run {result.parent_run_id[:8]})" in page


TUNE_ID = re.compile(r"\b[0-9a-f]{5}_\d{5}\b")  # Tune's own trial id, `63832_00005`
LONG_DECIMAL = re.compile(r"\d\.\d{4,}")  # 0.8055555555555556: unrounded


def test_people_read_one_trial_id_and_one_rounded_line_per_run(swept):
    """The short name (`t02`) in the tags, the card, report.html and the members (which
    title the Grad-CAM figures); Tune's id only in `medsweep.tune_trial_id`; every run's
    description one line, its figures rounded; the parent's description links the trials
    ranked in the runs table."""
    result, uri, _ = swept
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    trials = tracking.list_trial_runs(uri, parent.info.experiment_id, result.parent_run_id)
    for run in trials:
        tags = run.data.tags
        assert TUNE_ID.fullmatch(tags[tracking.TAG_TUNE_TRIAL_ID])
        assert re.fullmatch(r"t\d\d", tags[tracking.TAG_TRIAL_ID])
        assert run.info.run_name.startswith(tags[tracking.TAG_TRIAL_ID] + " ")
        note = tags["mlflow.note.content"]
        assert re.match(rf"Search trial {tags[tracking.TAG_TRIAL_ID]}: best val_accuracy "
                        r"\d\.\d{3} at epoch \d", note) and "\n" not in note, note
        assert not LONG_DECIMAL.search(note)
    assert set(result.leaderboard["trial_id"]) == {r.data.tags[tracking.TAG_TRIAL_ID]
                                                   for r in trials}
    ensemble = client.get_run(result.ensemble.run_id).data.tags["mlflow.note.content"]
    assert ensemble.startswith("Final ensemble: ") and "\n" not in ensemble
    assert f"(#/models/medsweep-brain/versions/{result.ensemble.registered_version})" in ensemble
    summary = parent.data.tags["mlflow.note.content"]
    assert not LONG_DECIMAL.search(summary + ensemble)
    assert (f"; [all trials by best_val_accuracy](#/experiments/{parent.info.experiment_id}/"
            f"runs?workflowType=machine_learning&viewStateShareKey=") in summary
    assert result.runs_url.startswith("http://127.0.0.1:5000/#/experiments/")
    card = client.get_model_version_by_alias("medsweep-brain", "candidate").description
    page = Path(client.download_artifacts(result.ensemble.run_id, "report.html")).read_text()
    for text in (card, re.sub(r"data:image/png;base64,[^\"]*", "", page),
                 " ".join(result.ensemble.members)):
        assert not TUNE_ID.search(text), TUNE_ID.search(text)
    assert all(re.fullmatch(r"t\d\d", m) for m in result.ensemble.members)
    assert f"- `{result.ensemble.members[0]}`: weight " in card


def test_the_card_carries_a_reporting_checklist_and_the_report_its_flow(swept):
    """The checklist's items filled from the run (sizes as the manifest counts them), the
    person-only items marked, no home path; report.html's flow, split table and gallery."""
    from orchestrator.ensemble.recorded import SYNTHETIC_SOURCE
    from orchestrator.serving.checklist import HEADING, PERSON_ITEMS, TO_BE_STATED

    result, uri, _ = swept
    client = mlflow.MlflowClient(uri)
    card = client.get_model_version_by_alias("medsweep-brain", "candidate").description
    checklist = card[card.index(HEADING):card.index("## Lineage")]
    items = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", checklist, re.M))
    assert items["Data source"] == SYNTHETIC_SOURCE
    assert re.fullmatch(r"\d{4}-\d\d-\d\d( to \d{4}-\d\d-\d\d| \(every file\)) \(file "
                        r"modification times, not acquisition dates; a phantom's .*\)",
                        items["Date range of the files"])
    table = _prepared().table
    assert items["Eligibility"].startswith(f"{len(table)} files found; left out before "
                                           "splitting: no missing or unreadable file")
    assert "`notumor` left out by variant `3class`" in items["Eligibility"]
    assert items["Outcome"] == "`glioma`, `meningioma`, `pituitary`"
    for split, rows in table.groupby("split"):
        per_class = ", ".join(f"{c} {(rows.label == c).sum()}"
                              for c in ("glioma", "meningioma", "pituitary"))
        assert f"{split} {len(rows)} ({per_class}; {rows.group.nunique()} groups)" in items[
            "Sample size per split and class"], split
    assert items["Validation"].startswith("holdout: choices made on validation predictions; ")
    assert "pair(s) of exact or near copies" in items["Duplicates"]
    for member in result.ensemble.members:
        assert f"`{member}` (" in items["Model"], member
    assert "backbone not recorded" not in items["Model"] and "48 px" in items["Model"]
    assert "DICOM window `file`" in items["Preprocessing"]
    assert re.match(r"test accuracy \d\.\d{3}", items["Performance"])
    assert "ece_calibrated" in items["Calibration"]
    assert items["Subgroups"].startswith("none recorded")
    assert items["External validation"].startswith("none yet")
    for name in PERSON_ITEMS:
        assert items[name] == TO_BE_STATED, name
    assert str(Path.home()) not in card and str(_prepared().root) not in card
    # report.html: the flow, each split's mix and the confident errors
    page = Path(client.download_artifacts(result.ensemble.run_id, "report.html")).read_text()
    assert f"Files found</b><br>{len(table)} images, {table.group.nunique()} groups" in page
    for split, rows in table.groupby("split"):
        assert f"<b>{split}</b><br>{len(rows)} images" in page, split
    assert "<h2>Characteristics of each split</h2>" in page and "class glioma" in page
    preds = pd.read_csv(client.download_artifacts(result.ensemble.run_id,
                                                  "test_predictions.csv"))
    assert "<h2>Failure gallery: the most confident test errors</h2>" in page
    wrong = (preds["decision"] != preds["label"]).sum()
    assert ('data-file="failure_gallery.png"' in page) == bool(wrong)
    assert ("made no error on the test split" in page) == (not wrong)
    if wrong:
        assert f"The {min(wrong, 6)} test images the ensemble got wrong" in page


def test_predict_cli_writes_one_row_per_readable_image_and_lists_the_rest(swept, tmp_path):
    _, uri, root = swept
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    paths = _prepared().paths("test")[:3]
    for i, p in enumerate(paths):
        shutil.copy(p, folder / ("sub" if i else "") / f"case{i}.jpg")
    (folder / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(folder / "tiny.png"), np.full((8, 8), 128, np.uint8))  # below the door
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.predict",
                           "models:/medsweep-brain@candidate", str(folder), "--out", str(out),
                           "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "predicting [" in proc.stderr
    assert [n for n in TF_START_UP if n in proc.stderr] == []  # quiet unless --verbose
    assert "skipped 2 unreadable or refused file(s): broken.png, tiny.png" in proc.stdout
    rows = pd.read_csv(out)
    assert sorted(rows["path"]) == ["case0.jpg", "sub/case1.jpg", "sub/case2.jpg"]
    assert {"decision", "confidence", "refer", "prediction_set", "set_size"} <= set(rows.columns)
    assert re.search(r"wrote 3 prediction\(s\) to .*\(\d referred to a person; mean set size "
                     r"\d\.\d\d; \d out of distribution\)", proc.stdout), proc.stdout
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    direct = model.predict(pd.DataFrame({"path": [str(folder / p) for p in rows["path"]]}))
    np.testing.assert_allclose(rows["confidence"], direct["confidence"], atol=1e-6)
    assert (rows["decision"] == direct["decision"]).all()
    assert (rows["prediction_set"] == direct["prediction_set"]).all()
    listed = pd.read_csv(tmp_path / "predictions_unreadable.csv")
    assert listed["path"].tolist() == ["broken.png", "tiny.png"]
    assert listed["reason"].tolist() == [
        "the file cannot be read: not an image (neither JPEG, PNG, BMP, TIFF nor DICOM)",
        "the file is 8 x 8 pixels; its shorter side is below the minimum of 16 px"]
    missing = subprocess.run([sys.executable, "-m", "orchestrator.predict",
                              "models:/medsweep-nothing@candidate", str(folder), "--out",
                              str(out), "--tracking-uri", uri], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cannot load models:/medsweep-nothing@candidate" in missing.stderr


def test_predict_per_group_writes_one_row_per_patient_by_the_models_rule(swept, tmp_path):
    """`--per-group COLUMN`: the served per-image answers combined per value of the CSV's
    column; the brain model (no groups in its data) records no rule, so `mean`, said once."""
    from orchestrator import predict

    _, uri, _ = swept
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(_prepared().paths("test")[:5]):
        shutil.copy(p, tmp_path / "imgs" / f"case{i}.jpg")
    pd.DataFrame({"path": [f"imgs/case{i}.jpg" for i in range(5)],
                  "patient": ["A", "A", "B", "B", "C"]}).to_csv(tmp_path / "new.csv",
                                                                index=False)
    lines: list[str] = []
    rows = predict.run("models:/medsweep-brain@candidate", str(tmp_path / "new.csv"),
                       str(tmp_path / "preds.csv"), tracking_uri=uri, per_group="patient",
                       log=lines.append)
    grouped = pd.read_csv(tmp_path / "preds_per_group.csv")
    assert grouped["group"].tolist() == ["A", "B", "C"]
    assert grouped["n_images"].tolist() == [2, 2, 1]
    probs = [f"prob_{c}" for c in get_task("brain").classes]
    expected = rows[probs].to_numpy()[:4].reshape(2, 2, len(probs)).mean(axis=1)
    np.testing.assert_allclose(grouped[probs].to_numpy()[:2], expected, atol=1e-9)
    combined = grouped[probs].to_numpy()
    assert grouped["decision"].tolist() == [probs[k][5:] for k in combined.argmax(axis=1)]
    np.testing.assert_allclose(grouped["confidence"], combined.max(axis=1))
    model = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate")
    cut = model.unwrap_python_model().serving_spec().refer_cut
    flagged = [rows["out_of_distribution"][rows["path"].str.startswith(tuple(
        f"imgs/case{i}" for i in idx))].any() for idx in ((0, 1), (2, 3), (4,))]
    assert grouped["refer"].tolist() == list((combined.max(axis=1) < cut) | flagged)
    assert set(grouped["group_rule"]) == {"mean"}
    assert sum("records no group rule" in line for line in lines) == 1
    assert any(line.startswith("wrote 3 group(s) by `patient` to ") for line in lines)
    with pytest.raises(ConfigError, match=r"--per-group patient_id: .*new\.csv has no "
                                          r"`patient_id` column \(columns: path, patient\)"):
        predict.run("models:/medsweep-brain@candidate", str(tmp_path / "new.csv"),
                    str(tmp_path / "again.csv"), tracking_uri=uri, per_group="patient_id")
    with pytest.raises(ConfigError, match="needs a CSV of images with a `patient` column"):
        predict.run("models:/medsweep-brain@candidate", str(tmp_path / "imgs"),
                    str(tmp_path / "again.csv"), tracking_uri=uri, per_group="patient")


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


def _documented_examples() -> dict[str, tuple[str, list[str]]]:
    """The bash blocks after `<!-- serving-example: NAME -->` in docs/serving.md, each with the
    image files it reads."""
    text = (ROOT / "docs" / "serving.md").read_text()
    found = re.findall(r"<!-- serving-example: (\w+) -->\n```bash\n(.*?)```", text, re.S)
    assert {name for name, _ in found} == {"one", "batch"}
    return {name: (block, list(dict.fromkeys(re.findall(r"\b(\w+\.jpg)\b", block))))
            for name, block in found}


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextlib.contextmanager
def _model_server(uri: str, model_uri: str, first_payload: dict):
    """A real `mlflow models serve` of `model_uri` on a free loopback port: yields the port
    and its answer to `first_payload` (asked until the server is up, at most 120 s); stopped
    on exit."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve",
                               "-m", model_uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, answer, status = time.time() + 120, None, None
        while time.time() < deadline and answer is None:
            try:
                status, answer = _post(port, first_payload)
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert answer is not None, "the model server never answered"
        yield port, status, answer
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_models_serve_answers_base64_jpegs_with_the_same_numbers(swept, tmp_path):
    """A real `mlflow models serve` on loopback: base64 JPEGs in over HTTP, the same numbers
    as the pyfunc in this process; bad input is MLflow's JSON error naming the row."""
    _, uri, _ = swept
    jpegs = [Path(p).read_bytes() for p in _prepared().paths("test")[:3]]
    encoded = [base64.b64encode(j).decode() for j in jpegs]
    payload = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
    with _model_server(uri, "models:/medsweep-brain@candidate", payload) as (port, status,
                                                                            answer):
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        mlflow.set_tracking_uri(uri)
        local = mlflow.pyfunc.load_model("models:/medsweep-brain@candidate").predict(
            pd.DataFrame({"image": jpegs}))
        probs = [c for c in local.columns if c.startswith("prob_")]
        np.testing.assert_allclose(served[probs].to_numpy(), local[probs].to_numpy(), atol=1e-6)
        assert served["decision"].tolist() == local["decision"].tolist()
        assert served["refer"].tolist() == local["refer"].tolist()
        assert served["prediction_set"].tolist() == local["prediction_set"].tolist()
        assert served["set_size"].tolist() == local["set_size"].tolist()
        np.testing.assert_allclose(served["ood_score"], local["ood_score"], rtol=1e-6)
        # the out-of-distribution flag: the brain phantom's test images are in distribution
        # (at most one of three above a cut fitted at a 5% false-alarm rate), uniform noise
        # is not, and is referred
        assert served["out_of_distribution"].sum() <= 1, served
        noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        png = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
        status, flagged = _post(port, {"dataframe_split": {"columns": ["image"],
                                                           "data": [[png], [encoded[0]]]}})
        assert status == 200, flagged
        rows = flagged["predictions"]
        assert rows[0]["out_of_distribution"] is True and rows[0]["refer"] is True, rows
        assert rows[1]["out_of_distribution"] is served["out_of_distribution"].iloc[0].item()
        # the `inputs` form gives the same answer
        status, same = _post(port, {"inputs": {"image": encoded}})
        assert status == 200 and pd.DataFrame(same["predictions"])["decision"].tolist() == \
            local["decision"].tolist()
        # docs/serving.md's curl examples, run as written (only the port differs)
        for name, (block, files) in _documented_examples().items():
            folder = tmp_path / name
            folder.mkdir()
            for f, content in zip(files, jpegs):
                (folder / f).write_bytes(content)
            script = block.replace("localhost:5001", f"localhost:{port}")
            proc = subprocess.run(["bash", "-euc", script], cwd=folder, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            rows = json.loads(proc.stdout)["predictions"]
            assert [r["decision"] for r in rows] == local["decision"].tolist()[:len(files)]
            assert [r["prediction_set"] for r in rows] == \
                local["prediction_set"].tolist()[:len(files)]
        not_an_image = base64.b64encode(b"hello, I am text").decode()
        for bad, message in (([[encoded[0]], [not_an_image]], "row 1: 16 bytes that are not an "
                                                              "image"),
                             ([], "empty batch")):
            status, error = _post(port, {"dataframe_split": {"columns": ["image"],
                                                             "data": bad}})
            assert status == 400, error
            assert error["error_code"] == "INVALID_PARAMETER_VALUE", error
            assert message in error["message"] and "Traceback" not in error["message"]
        # the door: a 380 KiB PNG whose header declares 20,000 x 20,000 pixels is refused from
        # its header, and the server's peak memory does not grow by what decoding would take
        giant = _giant_png(20_000)
        assert len(giant) < 500_000
        peak = _peak_rss_mb(server_pid(port))
        tiny = base64.b64encode(cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1]).decode()
        for image, message in ((base64.b64encode(giant).decode(), "row 0: the image declares "
                                "400.0 megapixels in its header, above the limit of 50 "
                                "megapixels"),
                               (tiny, "row 0: the image is 1 x 1 pixels; its shorter side is "
                                "below the minimum of 16 px")):
            status, error = _post(port, {"dataframe_split": {"columns": ["image"],
                                                             "data": [[image]]}})
            assert status == 400 and message in error["message"], error
        assert _peak_rss_mb(server_pid(port)) - peak < 150  # decoding would add >= 400 MB


def _giant_png(side: int) -> bytes:
    """A black gray PNG of side x side pixels, compressed row by row (never whole in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer, row, parts = zlib.compressobj(9), bytes(side + 1), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def server_pid(port: int) -> int:
    """The process listening on the loopback `port` (the model server's worker)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inode = fields[9]
    assert inode is not None, f"nothing listens on port {port}"
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == f"socket:[{inode}]":
                return int(fd.parts[2])
        except OSError:
            continue
    raise AssertionError(f"no process holds the socket of port {port}")


def _peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of `pid` and every process under it, in MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        status = Path(f"/proc/{p}/status").read_text()
        total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in children.read_text().split()]
    return total


def test_default_policies_are_the_registered_ones_cheapest_first():
    from orchestrator.ensemble.build import DEFAULT_POLICIES
    from orchestrator.tta.policies import POLICIES

    assert DEFAULT_POLICIES == tuple(POLICIES)
    assert [len(POLICIES[p]) for p in DEFAULT_POLICIES] == [1, 6, 17]


def test_cli_unknown_sweep_run_is_one_line_and_exit_2(tmp_path, cli_in_process):
    from orchestrator.ensemble.__main__ import main

    code, _, err = cli_in_process(main, ["--sweep-run", "nope", "--tracking-uri",
                                         f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    assert code == 2, err[-2000:]
    assert "'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("option, message", [(["--resamples", "100"], ">= 1000"),
                                             (["--set-coverage", "1.5"], "got 1.5")])
def test_cli_bad_clinical_option_is_one_line_and_exit_2(tmp_path, option, message,
                                                        cli_in_process):
    from orchestrator.ensemble.__main__ import main

    code, _, err = cli_in_process(main, ["--sweep-run", "x", *option], tmp_path)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_rebuilds_with_mc_dropout_and_prints_intervals(swept):
    """Last in this module: it registers a new version under the same alias."""
    result, uri, root = swept
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run",
                           result.parent_run_id, "--tracking-uri", uri, "--tta", "none",
                           "--top-k", "2", "--mc-dropout", "3", "--set-coverage", "0.8",
                           "--set-conditional"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test [95% CI]" in proc.stdout and "test holds" not in proc.stdout  # 21 groups
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", proc.stdout)
    if "[no interval]" in proc.stdout:  # a zero-width interval, and the line that says so
        assert re.search(r"^zero-width interval: no interval for ", proc.stdout, re.M)
    assert "temperature (fitted on validation predictions)" in proc.stdout
    assert re.search(r"^prediction sets \(80% nominal, one quantile per class, fitted on "
                     r"validation predictions.*\): test coverage \d\.\d{3}.*, mean set size "
                     r"\d\.\d{3}", proc.stdout, re.M), proc.stdout
    printed = proc.stdout + proc.stderr  # quiet unless --verbose, as the sweep
    assert [n for n in (*TF_START_UP, RAY_TOKEN_NOTICE, "retracing") if n in printed] == []
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("medsweep-brain", "candidate")
    run = client.get_run(version.run_id)
    assert version.run_id != result.ensemble.run_id
    assert run.data.params["tta_policy"] == "none"
    assert "test_mc_dropout_mean_entropy" in run.data.metrics
    assert run.data.metrics["set_coverage_nominal"] == 0.8
    assert {"set_quantile_glioma", "set_quantile_meningioma"} <= set(run.data.metrics)


def test_the_ensemble_refuses_data_that_changed_after_the_sweep(swept):
    """The ensemble rebuilds the split from the sweep's recorded manifest, never re-splits, and
    one changed image is enough to refuse: a clear line, no ensemble run. (The sweep's phantom
    is changed for the moment of the check, and put back.)"""
    result, uri, root = swept
    data = default_phantom_dir(get_task("brain"), PER_CLASS)
    victim = sorted((data / "Testing" / "glioma").glob("*.jpg"))[0]
    original = victim.read_bytes()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_run(result.parent_run_id).info.experiment_id

    def ensembles() -> int:
        return len([r for r in client.search_runs([experiment_id])
                    if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_ENSEMBLE])

    before = ensembles()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    try:
        cv2.imwrite(str(victim), 255 - cv2.imread(str(victim)))  # the same name, another picture
        proc = subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "--sweep-run",
                               result.parent_run_id, "--tracking-uri", uri], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        victim.write_bytes(original)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "the data changed since the sweep recorded it" in line
    assert "Testing/glioma/" + victim.name in line and "Traceback" not in proc.stderr
    assert ensembles() == before


# ----------------------------------------------------------------- external validation (#24)
def _external_site(root: Path, seed: int, per_class: int = 8) -> Path:
    """Another draw of the brain phantom, its contrast lowered and brightened (another
    scanner): 8 images per class, each its own group, so >= 20 groups for intervals."""
    data = write_phantom(get_task("brain"), root, per_class=per_class, seed=seed)
    for path in data.rglob("*.jpg"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32)
        cv2.imwrite(str(path), np.clip(0.7 * image + 30, 0, 255).astype(np.uint8))
    return data


def test_external_evaluation_logs_figures_the_transport_line_and_tags_the_version(swept,
                                                                                tmp_path):
    from orchestrator.evaluate.external_run import evaluate_external

    result, uri, _ = swept
    version = result.ensemble.registered_version  # the sweep's own, whatever moved @candidate
    data = _external_site(tmp_path / "site_b", seed=7)
    said: list[str] = []
    out = evaluate_external(f"models:/medsweep-brain/{version}", str(data), site="site_b",
                            tracking_uri=uri, recalibrate=0.4, log=said.append)
    text = "\n".join(said)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(out.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["medsweep.evaluated_model"] == "medsweep-brain"
    assert tags["medsweep.evaluated_version"] == version and tags["medsweep.site"] == "site_b"
    assert tags["medsweep.evaluated_run"] == result.ensemble.run_id
    assert tags["mlflow.note.content"].startswith(  # its page links back to the version
        f"External evaluation of [medsweep-brain version {version}](#/models/medsweep-brain/"
        f"versions/{version}) at site_b: ")
    assert len(tags["medsweep.data_fingerprint"]) == 32
    # 24 groups here, 21 on the internal test split: every interval is drawn, a verdict given
    for key in ("external_accuracy", "external_recall_glioma",
                "external_calibration_intercept", "external_brier", "external_refer_coverage",
                "external_set_coverage", "external_ood_flagged", "internal_accuracy",
                "difference_accuracy", "recalibration_temperature",
                "before_recalibration_brier", "after_recalibration_brier"):
        assert key in metrics, key
    # every figure has its interval, or the printed notes say why it has none (a weak model
    # that calls one class has the same accuracy in every class-stratified resample)
    for key in metrics:
        figure = key.removeprefix("external_")
        if key.startswith("external_") and not key.endswith(("_ci_low", "_ci_high")) \
                and f"{key}_ci_low" not in metrics and np.isfinite(metrics[key]):
            assert re.search(rf"^zero-width interval: no interval for .*\b{figure}\b", text,
                             re.M), (key, text)
    assert metrics["external_roc_auc_ci_low"] < metrics["external_roc_auc_ci_high"], text
    assert metrics["difference_accuracy"] == pytest.approx(
        metrics["external_accuracy"] - metrics["internal_accuracy"])
    line = _assert_the_transport_line_says_what_was_logged(text, run, uri,
                                                           result.ensemble.run_id)
    assert line.group("metric") == "accuracy"  # the brain task's
    verdict = out.transport.verdict
    assert tags["medsweep.transport"] == verdict
    # 24 groups here, 21 on the internal test split: a verdict exactly when both figures have
    # a sound interval (the smoke model may call one class: zero width, no verdict)
    sound = {"external_accuracy_ci_low", "internal_accuracy_ci_low"} <= set(metrics)
    assert (verdict != "no verdict") == sound == ("difference_accuracy_ci_low" in metrics)
    assert re.search(r"^evaluation run \w{32} \(evaluation.html in its artifacts\); open the "
                     r"MLflow UI: mlflow ui --backend-store-uri sqlite:///", said[-1])
    artifacts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"evaluation.html", "reliability_diagram.png", "reliability_recalibrated.png",
            "external_predictions.csv", "external_figures.csv",
            "recalibration_split.csv"} <= artifacts
    page = Path(client.download_artifacts(out.run_id, "evaluation.html")).read_text()
    assert "SYNTHETIC PHANTOM DATA" in page and "external accuracy" in page
    # the version carries the site's tag and a line in its description
    mv = client.get_model_version("medsweep-brain", version)
    assert mv.tags["external.site_b"] == out.headline
    assert out.headline.startswith("accuracy ") and out.headline.endswith(verdict)
    # ... linking the evaluation run's page, which the MLflow UI opens from the version's page
    assert (f"- External validation, site_b: {line.group(0)} ([evaluation run](#/experiments/"
            f"{run.info.experiment_id}/runs/{out.run_id}?workflowType=machine_learning), "
            "24 images") in mv.description
    # the figures are linked to the version's logged model, the site as their dataset
    model_metrics = client.get_logged_model(mv.source.removeprefix("models:/")).metrics
    assert any(m.key == "external_accuracy" and m.dataset_name == "site_b"
               for m in model_metrics)
    # recalibration: fitted and judged on different groups, together every image once
    split = pd.read_csv(client.download_artifacts(out.run_id, "recalibration_split.csv"),
                        dtype=str)
    fit, judged = (set(split.loc[split["part"] == p, "group"]) for p in ("fit", "evaluated"))
    assert fit and judged and not fit & judged
    assert len(split) == len(pd.read_csv(client.download_artifacts(
        out.run_id, "external_predictions.csv"))) == 24
    assert re.search(rf"^recalibration: T x \d+\.\d{{3}} fitted on {len(fit)} images "
                     rf"\({len(fit)} groups\), judged on the other {len(judged)} ", text, re.M)


TRANSPORT_LINE = re.compile(
    r"^(?P<verdict>transported|did not transport|cannot say whether performance transported "
    r"\(.+\)): external (?P<metric>\w+) (?P<external>\S+ \[[^]]+\]) vs internal "
    r"(?P<internal>\S+ \[[^]]+\]); difference (?P<difference>\S+ \[[^]]+\])$", re.M)


def _shown(metrics: dict, key: str) -> str:
    """A logged figure as the transport line must print it."""
    interval = (f"[{metrics[f'{key}_ci_low']:.3f}, {metrics[f'{key}_ci_high']:.3f}]"
                if f"{key}_ci_low" in metrics else "[no interval]")
    return f"{metrics[key]:.3f} {interval}"


def _decided_figure(metric: str, answers: pd.DataFrame) -> float:
    """Accuracy or balanced accuracy of a logged answers table, recomputed from its label and
    probability columns (the argmax, which a temperature does not move)."""
    probs = [c for c in answers.columns if c.startswith("prob_")]
    decided = answers[probs].to_numpy(float).argmax(axis=1)
    right = pd.Series(np.array([c.removeprefix("prob_") for c in probs])[decided]
                      == answers["label"].to_numpy())
    if metric == "accuracy":
        return float(right.mean())
    assert metric == "balanced_accuracy", metric
    return float(right.groupby(answers["label"].to_numpy()).mean().mean())


def _assert_the_transport_line_says_what_was_logged(text: str, run, uri: str,
                                                    internal_run_id: str) -> re.Match:
    """The printed verdict line against the run's metrics, and those against the answers
    logged: the external figure from the site's answers, the internal one from the version's
    own test answers, the difference theirs; the verdict the interval's side of 0."""
    line = TRANSPORT_LINE.search(text)
    assert line, text
    metrics, metric = run.data.metrics, line.group("metric")
    for side in ("external", "internal", "difference"):
        assert line.group(side) == _shown(metrics, f"{side}_{metric}"), (side, line.group(0))
    client = mlflow.MlflowClient(uri)
    external = pd.read_csv(client.download_artifacts(run.info.run_id, "external_predictions.csv"))
    internal = pd.read_csv(client.download_artifacts(internal_run_id, "test_predictions.csv"))
    assert metrics[f"external_{metric}"] == pytest.approx(_decided_figure(metric, external))
    assert metrics[f"internal_{metric}"] == pytest.approx(_decided_figure(metric, internal))
    assert metrics[f"difference_{metric}"] == pytest.approx(
        metrics[f"external_{metric}"] - metrics[f"internal_{metric}"])
    verdict = run.data.tags["medsweep.transport"]
    if f"difference_{metric}_ci_low" in metrics:
        low, high = (metrics[f"difference_{metric}_ci_{e}"] for e in ("low", "high"))
        assert low <= high and line.group("verdict") == verdict == (
            "did not transport" if high < 0 else "transported")
        # a side without its interval gives none to the difference either
        assert {f"external_{metric}_ci_low", f"internal_{metric}_ci_low"} <= set(metrics)
    else:  # the reason names a side without its interval, if one has none
        assert verdict == "no verdict" and line.group("verdict").startswith("cannot say")
        bare = [s for s in ("external", "internal") if f"{s}_{metric}_ci_low" not in metrics]
        assert not bare or any(f"({s} " in line.group("verdict") for s in bare), line.group(0)
    return line


def _with_sex_column(data: Path) -> pd.DataFrame:
    """The site as the CSV layout reads it: `labels.csv` (path, label, group, sex), which wins
    over the class folders, listing the model's classes. Sex F and M in turn, none given for
    the first 4 images (unknown: too few to measure)."""
    classes = get_task("brain").classes
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg")
                   if p.parent.name in classes)
    table = pd.DataFrame({"path": paths, "label": [p.split("/")[-2] for p in paths],
                          "group": [Path(p).stem for p in paths],
                          "sex": [""] * 4 + ["F", "M"] * ((len(paths) - 4) // 2)})
    table.to_csv(data / "labels.csv", index=False)
    return table


def test_evaluate_cli_measures_the_site_per_subgroup_of_its_csv(swept, tmp_path):
    """`python -m orchestrator.evaluate MODEL DATA --task folder --subgroup sex`: the sex
    column of the site's CSV measured per value in evaluation.html and the run's table, the
    figures the logged answers' own; the transport line the logged figures'."""
    from test_subgroups import _html_tables

    from orchestrator.clinical.subgroups import TOO_FEW

    result, uri, _ = swept
    version = result.ensemble.registered_version
    data = _external_site(tmp_path / "site_c", seed=11, per_class=16)
    table = _with_sex_column(data)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.evaluate",
                           f"models:/medsweep-brain/{version}", str(data), "--task", "folder",
                           "--subgroup", "SEX", "--tracking-uri", uri], cwd=tmp_path,
                          env=user_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_id = re.search(r"^evaluation run (\w{32}) ", proc.stdout, re.M).group(1)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    line = _assert_the_transport_line_says_what_was_logged(proc.stdout, run, uri,
                                                           result.ensemble.run_id)
    assert line.group("metric") == "balanced_accuracy"  # the folder task's, as asked
    assert re.search(r"^subgroups: sex 2 value\(s\) measured, 1 too few; ", proc.stdout, re.M)
    # the run's table: every image in one row, each value's figures those of its answers
    answers = pd.read_csv(client.download_artifacts(run_id, "external_predictions.csv"))
    answers = answers.merge(table[["path", "sex"]].fillna(""), on="path")
    assert len(answers) == len(table) == 48
    by_value = pd.read_csv(client.download_artifacts(
        run_id, "external_metrics_by_subgroup.csv"), keep_default_na=False)
    assert sorted(set(by_value["value"])) == ["F", "M", "unknown"]
    for value, sex in (("F", "F"), ("M", "M")):
        rows = by_value[by_value["value"] == value].set_index("metric")
        mine = answers[answers["sex"] == sex]
        assert (rows["n"] == 22).all() and (rows["groups"] == 22).all()
        assert float(rows.loc["balanced_accuracy", "point"]) == pytest.approx(
            _decided_figure("balanced_accuracy", mine))
        assert set(rows.index) == {"balanced_accuracy", "recall_glioma", "recall_meningioma",
                                   "recall_pituitary"}
    assert by_value[by_value["value"] == "unknown"][["n", "status"]].values.tolist() == [
        [4, TOO_FEW]]
    # evaluation.html: the same table, read as a person reads it
    page = Path(client.download_artifacts(run_id, "evaluation.html")).read_text()
    section = page[page.index("<h2>Subgroups</h2>"):]
    assert "The external data measured per value of sex: the values are read from the " \
        "site's data" in unescape(section) and "recorded with the split" not in section
    (header, *rows), *_ = _html_tables(section)
    assert header == ["subgroup", "value", "n", "groups", "balanced_accuracy", "recall_glioma",
                      "recall_meningioma", "recall_pituitary", "flag"]
    assert [r[:4] for r in rows] == [["sex", "F", "22", "22"], ["sex", "M", "22", "22"],
                                     ["sex", "unknown", "4", "4"]]
    women = _decided_figure("balanced_accuracy", answers[answers["sex"] == "F"])
    assert rows[0][4].startswith(f"{women:.3f} ")
    assert rows[2][-1] == TOO_FEW


def test_evaluate_cli_refuses_data_of_other_classes_in_one_line(swept, tmp_path):
    _, uri, _ = swept
    data = write_phantom(get_task("folder"), tmp_path / "shapes", per_class=4, seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.evaluate",
                           "models:/medsweep-brain/1", str(data), "--task", "folder",
                           "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.strip()]
    assert errors == ["error: the data's classes (disc, ring, square) are not the model's "
                      "(glioma, meningioma, pituitary)"], proc.stderr
