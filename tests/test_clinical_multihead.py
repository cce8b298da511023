"""A multi-head ensemble after its choice: per-head calibration and refer cuts fitted on held-out
predictions only, test figures with bootstrap intervals for every head, report.html, the served
per-head columns through a real logged MLflow pyfunc, and promotion on mean_skill.

The members are two small multi-head CNNs trained here for a few epochs on drawn images (the
shape class is the quadrant of a disc, the texture class its colour, the size its diameter)."""
from __future__ import annotations

import dataclasses
import json
import re
from html import unescape
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from orchestrator.clinical.calibration import apply_temperature, fit_temperature
from orchestrator.clinical.conformal import EVERY_CLASS, fit_sets, in_set
from orchestrator.clinical.evaluate import ClinicalInputs, ClinicalOptions, Member, evaluate
from orchestrator.clinical.resampled_metrics import fast_multihead_metrics
from orchestrator.data.cache import decode_bytes, preprocess_image
from orchestrator.data.dataset import PreparedData
from orchestrator.ensemble import publish
from orchestrator.ensemble.choice import Choice
from orchestrator.ensemble.promote import compare
from orchestrator.ensemble.selection import Ensemble
from orchestrator.errors import ConfigError
from orchestrator.models.heads import TargetScale, column_slices
from orchestrator.metrics import multihead_metrics
from orchestrator.models.classifier import build_model
from orchestrator.serving import contract
from orchestrator.tracking import ensemble_model
from orchestrator.tta.policies import policy_for_task
from orchestrator.tta.predict import tta_predict
from tasks.base import Preprocessing
from tasks.multihead import MULTIHEAD

SIZE = 32
N_VAL, N_TEST = 90, 80
TRANSFORMS = policy_for_task("standard6", MULTIHEAD.tta_kinds)
WEIGHTS = (0.6, 0.4)
QUIET = dict(log=lambda _: None)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 RGB and (N, heads) targets: a disc on noise, in quadrant `shape`,
    bright in colour channel `texture`, `size` mm across (4 mm a pixel of radius)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.zeros((n, 3))
    for i in range(n):
        quadrant, colour, radius = (int(v) for v in (rng.integers(0, 4), rng.integers(0, 3),
                                                     rng.integers(2, 7)))
        fill = [40, 40, 40]
        fill[colour] = 255
        cv2.circle(x[i], (8 + 16 * (quadrant % 2), 8 + 16 * (quadrant // 2)), radius,
                   tuple(fill), -1)
        y[i] = quadrant, colour, 4.0 * radius
    return x, y


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two saved multi-head models (different seeds, a few epochs each): the members."""
    root = tmp_path_factory.mktemp("members")
    x, y = _images(300, 0)
    paths = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = build_model("baseline_cnn", 0, SIZE, head_units=16, heads=MULTIHEAD.heads,
                            target_scales={"size": TargetScale(16.0, 6.0)})
        model.compile(keras.optimizers.Adam(3e-3),
                      loss={"shape": "sparse_categorical_crossentropy",
                            "texture": "sparse_categorical_crossentropy", "size": "huber"},
                      loss_weights={"shape": 1.0, "texture": 1.0, "size": 0.3})
        model.fit(x.astype(np.float32), {h.name: y[:, i] for i, h in enumerate(MULTIHEAD.heads)},
                  epochs=3, batch_size=32, verbose=0)
        paths.append(root / f"m{seed}.keras")
        model.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def case(members, tmp_path_factory):
    """Validation and test predictions of the ensemble and its two baselines, test images
    written as PNG files."""
    root = tmp_path_factory.mktemp("data")
    (x_val, y_val), (x_test, y_test) = _images(N_VAL, 1), _images(N_TEST, 2)
    files = []
    for i, img in enumerate(x_test):
        files.append(root / f"test_{i:03d}.png")
        files[-1].write_bytes(_png(img))
    # what the served model sees: the decoded file, preprocessed as at training
    x_test = np.stack([preprocess_image(decode_bytes(f.read_bytes()), Preprocessing(), SIZE)
                       for f in files])
    single = {name: {split: tta_predict(keras.models.load_model(p), x, TRANSFORMS)
                     for split, x in (("val", x_val), ("test", x_test))}
              for name, p in zip(("m0", "m1"), members)}
    ens = {split: WEIGHTS[0] * single["m0"][split] + WEIGHTS[1] * single["m1"][split]
           for split in ("val", "test")}
    rows = {"ensemble": ens, "best_single": single["m0"],
            "top2_soft_vote": {s: (single["m0"][s] + single["m1"][s]) / 2 for s in ens}}
    return dict(root=root, files=files, x_test=x_test, y_val=y_val, y_test=y_test,
                val={k: v["val"] for k, v in rows.items()},
                test={k: v["test"] for k, v in rows.items()})


def _inputs(case, members, y_test=None) -> ClinicalInputs:
    board = pd.DataFrame({"trial": ["m0", "m1", "m2"], "best_val_mean_skill": [0.4, 0.3, 0.1],
                          "status": ["completed"] * 3, "label": ["m0", "m1", "m2"]})
    return ClinicalInputs(
        task=MULTIHEAD, y_val=case["y_val"], y_test=case["y_test"] if y_test is None else y_test,
        val_probs=case["val"], test_probs=case["test"],
        test_groups=np.arange(N_TEST) // 2, test_paths=[f.name for f in case["files"]],
        test_images={SIZE: case["x_test"]},
        members=[Member(f"m{i}", w, str(p), SIZE) for i, (w, p) in enumerate(zip(WEIGHTS,
                                                                                 members))],
        policy="standard6", leaderboard=board, synthetic=True, title="multi-head report",
        val_groups=np.arange(N_VAL) // 3)  # three views of a patient, each drawn on its own


@pytest.fixture(scope="module")
def evaluated(case, members, tmp_path_factory):
    out = tmp_path_factory.mktemp("clinical")
    return evaluate(_inputs(case, members), ClinicalOptions(), out, **QUIET), out


# --- the numbers -------------------------------------------------------------------------------
def test_fast_multihead_metrics_are_the_trainers_figures():
    rng = np.random.default_rng(0)
    for n, absent in ((200, False), (40, True)):
        y = np.c_[rng.integers(0, 4, n), rng.integers(0, 3, n), rng.normal(40, 8, n)]
        if absent:  # a class missing from the truth, another never predicted
            y[:, 0] = np.where(y[:, 0] == 3, 0, y[:, 0])
        probs = [rng.dirichlet(np.ones(c), n) for c in (4, 3)]
        matrix = np.c_[probs[0], probs[1], y[:, 2] + rng.normal(0, 5, n)]
        fast, reference = fast_multihead_metrics(y, matrix, MULTIHEAD), \
            multihead_metrics(y, matrix, MULTIHEAD)
        assert list(fast) == list(reference)
        for key, value in reference.items():
            assert fast[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_every_head_is_measured_with_intervals(evaluated, case):
    result, _ = evaluated
    metrics = result.metrics
    heads = {"shape": ("balanced_accuracy", "accuracy", "macro_f1", "loss", "skill",
                       "ece_calibrated", "coverage_at_refer_cut"),
             "texture": ("balanced_accuracy", "accuracy", "macro_f1", "loss", "skill"),
             "size": ("mae", "rmse", "r2", "skill")}
    # A head that answers one class for every case (this small model may, on texture) has a
    # balanced accuracy of exactly 1/classes on every resample: a zero-width interval away
    # from 0 and 1, which is no interval (bootstrap.interval_note); its point stays.
    constant = {f"{h.name}_balanced_accuracy" for h in MULTIHEAD.heads if h.is_classification
                and metrics[f"test_{h.name}_balanced_accuracy"] == pytest.approx(
                    1 / len(h.classes), abs=1e-12)}
    for head, names in heads.items():
        for name in names:
            for suffix in ("", "_ci_low", "_ci_high"):
                present = f"test_{head}_{name}{suffix}" in metrics
                assert present != (suffix != "" and f"{head}_{name}" in constant), \
                    f"{head}_{name}{suffix}"
    for key in ("test_mean_skill", "test_mean_skill_ci_low", "test_mean_skill_ci_high",
                "test_mean_skill_minus_best_single", "test_mean_skill_minus_best_single_ci_low",
                "shape_temperature", "shape_refer_cut", "texture_temperature",
                "texture_refer_cut"):
        assert key in metrics, key
    assert not any(k.startswith("size_temperature") or k == "size_refer_cut" for k in metrics)
    assert "temperature" not in metrics and "refer_cut" not in metrics  # per head only
    # the points are the trainer's own figures on the whole test split
    reference = multihead_metrics(case["y_test"], case["test"]["ensemble"], MULTIHEAD)
    for key, value in reference.items():
        assert metrics[f"test_{key}"] == pytest.approx(value), key
    # every model row, every head: the interval holds the point
    ci = result.intervals.set_index(["model", "metric"])
    for model in ("ensemble", "best_single", "top2_soft_vote"):
        for metric in ("mean_skill", "shape_balanced_accuracy", "texture_accuracy",
                       "size_mae", "size_rmse"):
            row = ci.loc[(model, metric)]
            assert row.low <= row.point <= row.high and row.resamples == 1000, (model, metric)
            assert row.high > row.low, (model, metric)  # a real interval, not a point
    assert result.intervals.model.unique().tolist() == ["ensemble", "best_single",
                                                        "top2_soft_vote"]


def test_the_paired_difference_is_on_mean_skill(evaluated, case):
    result, _ = evaluated
    y, test = case["y_test"], case["test"]
    point = (multihead_metrics(y, test["ensemble"], MULTIHEAD)["mean_skill"]
             - multihead_metrics(y, test["best_single"], MULTIHEAD)["mean_skill"])
    metrics = result.metrics
    assert metrics["test_mean_skill_minus_best_single"] == pytest.approx(point)
    assert metrics["test_mean_skill_minus_best_single_ci_low"] <= point <= metrics[
        "test_mean_skill_minus_best_single_ci_high"]


def test_too_few_groups_give_every_head_its_points_and_no_interval(case, members, tmp_path):
    inputs = dataclasses.replace(_inputs(case, members), test_groups=np.arange(N_TEST) // 7)
    result = evaluate(inputs, ClinicalOptions(), tmp_path, **QUIET)  # 12 groups
    metrics = result.metrics
    for key in ("test_mean_skill", "test_shape_balanced_accuracy", "test_size_mae",
                "test_mean_skill_minus_best_single"):
        assert key in metrics and f"{key}_ci_low" not in metrics and f"{key}_ci_high" \
            not in metrics, key
    assert result.interval_notes == ["test holds 12 groups (< 20): no interval for any test "
                                     "figure"]
    html = unescape((tmp_path / "report.html").read_text())
    assert f"{metrics['test_shape_balanced_accuracy']:.3f} [no interval]" in html
    assert not re.search(r"\[[+-]?\d\.\d{3}, [+-]?\d\.\d{3}\]", html)
    for verdict in ("is better than", "is worse than", "is not distinguishable from"):
        assert f"{verdict} the best single" not in html  # no verdict from no interval
    assert "this test split cannot tell whether the ensemble beats" in html


def test_each_classification_head_is_calibrated_on_its_own_held_out_block(evaluated, case):
    result, _ = evaluated
    slices = column_slices(MULTIHEAD)
    assert list(result.heads) == ["shape", "texture", "size"]
    assert result.referral is None and result.operating_point is None
    assert np.isnan(result.temperature)
    for i, head in enumerate(MULTIHEAD.heads):
        fit, s = result.heads[head.name], slices[head.name]
        raw = case["test"]["ensemble"][:, s]
        if not head.is_classification:
            assert fit.temperature is None and fit.referral is None
            np.testing.assert_array_equal(result.test_calibrated[:, s], raw)  # no calibration
            continue
        assert fit.temperature == pytest.approx(
            fit_temperature(case["y_val"][:, i], case["val"]["ensemble"][:, s]))
        assert result.metrics[f"{head.name}_temperature"] == fit.temperature
        np.testing.assert_allclose(result.test_calibrated[:, s],
                                   apply_temperature(raw, fit.temperature))
        np.testing.assert_allclose(result.test_calibrated[:, s].sum(axis=1), 1.0)
        assert 0.0 < fit.referral.cut and fit.referral.cases == N_VAL
        # its prediction sets: on this head's calibrated held-out block, measured on test
        calibrated_val = apply_temperature(case["val"]["ensemble"][:, s], fit.temperature)
        assert fit.sets == fit_sets(calibrated_val, case["y_val"][:, i].astype(int), 0.90)
        member = in_set(result.test_calibrated[:, s], fit.sets)
        covered = member[np.arange(N_TEST), case["y_test"][:, i].astype(int)].mean()
        assert result.metrics[f"test_{head.name}_set_coverage"] == pytest.approx(covered)
        assert result.metrics[f"{head.name}_set_quantile"] == fit.sets.quantiles[0]
        for c in head.classes:
            assert f"test_{head.name}_set_coverage_{c}" in result.metrics
    assert result.heads["size"].sets is None
    assert not any(k.startswith("size_set") or k.startswith("test_size_set")
                   for k in result.metrics)
    assert result.heads["shape"].temperature != result.heads["texture"].temperature


def test_temperatures_and_cuts_ignore_the_test_labels(evaluated, case, members, tmp_path):
    first, _ = evaluated
    rng = np.random.default_rng(5)
    shuffled = case["y_test"].copy()
    for j in range(shuffled.shape[1]):
        shuffled[:, j] = rng.permutation(shuffled[:, j])
    again = evaluate(_inputs(case, members, y_test=shuffled),
                     dataclasses.replace(ClinicalOptions(), resamples=1000), tmp_path, **QUIET)
    # temperatures, refer cuts and set quantiles, head by head (repr: a refer-everything rule's NaN accuracy
    # never equals itself, and repr shows every float in full)
    assert repr(again.heads) == repr(first.heads)
    np.testing.assert_array_equal(again.test_calibrated, first.test_calibrated)
    assert again.metrics["test_shape_accuracy"] != first.metrics["test_shape_accuracy"]
    assert again.metrics["test_size_mae"] != first.metrics["test_size_mae"]


def test_the_report_has_a_section_and_figures_per_head(evaluated):
    result, out = evaluated
    names = {p.name for p in result.files}
    assert {"report.html", "test_metrics_with_ci.csv", "review_low_confidence.csv",
            "confusion_matrix_shape.png", "confusion_matrix_texture.png",
            "reliability_diagram_shape.png", "reliability_diagram_texture.png",
            "scatter_size.png", "trial_comparison.png", "test_metrics_per_patient.csv",
            "review_per_patient.csv", "confusion_matrix_per_patient_shape.png",
            "confusion_matrix_per_patient_texture.png"} == names
    for path in result.files:
        assert path.exists(), path
    for png in [p for p in result.files if p.suffix == ".png"]:
        assert cv2.imread(str(png)).shape[1] >= 1000, png.name
    page = unescape((out / "report.html").read_text())
    assert "SYNTHETIC PHANTOM DATA" in page
    for text in ("Head shape: classification, 4 classes (disc, square, triangle, ring)",
                 "Head texture: classification, 3 classes (smooth, stripes, dots)",
                 "Head size: regression, in mm", "size_mae", "size_r2", "shape_skill",
                 "Referral on this head (`shape_refer`)", "Grad-CAM maps and MC-dropout figures "
                 "are not drawn for a multi-head ensemble", "mean_skill on the same resampled",
                 "Head shape: the served `shape_prediction_set` lists",
                 "Head texture: the served `texture_prediction_set` lists",
                 "What the coverage guarantee assumes"):
        assert text in page, text
    assert "size_prediction_set" not in page
    for png in [n for n in names if n.endswith(".png")]:
        assert f'data-file="{png}"' in page, png
    assert page.count("data:image/png;base64,") == sum(n.endswith(".png") for n in names)
    review = pd.read_csv(out / "review_low_confidence.csv")
    assert len(review) == 20 and review["lowest_confidence"].is_monotonic_increasing
    assert {"shape_true", "shape_predicted", "texture_confidence", "size_abs_error"} <= set(
        review.columns)
    _assert_each_classification_head_is_grouped(result, out, page)


def _assert_each_classification_head_is_grouped(result, out, page: str) -> None:
    """Per patient through the per-head structures: each classification head's rule on its
    own held-out block, its figures per group, its column in the review; the regression head
    by the group's mean; every head's rule in the spec."""
    fits = result.fits
    assert fits["size"].grouping is None and fits["size"].group_rule is None
    for name in ("shape", "texture"):
        grouping = fits[name].grouping
        assert (grouping.groups, grouping.images) == (30, N_VAL)
        assert fits[name].group_rule == min(grouping.scores, key=grouping.scores.get)
    per = pd.read_csv(out / "test_metrics_per_patient.csv").set_index("metric")
    for metric in ("patient_mean_skill", "patient_shape_balanced_accuracy",
                   "patient_texture_coverage_at_refer_cut", "patient_size_mae"):
        assert per.loc[metric, "groups"] == 40, metric
    assert "test_patient_mean_skill" in result.metrics
    review = pd.read_csv(out / "review_per_patient.csv")
    assert (review["n_images"] == 2).all() and review["lowest_confidence"].is_monotonic_increasing
    assert {"group", "images", "shape_true", "texture_predicted", "size_abs_error"} <= set(
        review.columns)
    section = page[page.index("<h2>Per patient</h2>"):page.index("<h2>Figures</h2>")]
    assert "80 images form 40 groups" in section
    for name in ("shape", "texture"):
        assert f"head {name}: images combined per group by their {fits[name].group_rule}" \
            in section
    assert result.patient_line.startswith("per patient: 40 test groups of 80 images, combined "
                                          f"by shape {fits['shape'].group_rule}, texture "
                                          f"{fits['texture'].group_rule} (chosen on validation")
    spec = publish.serving_spec(MULTIHEAD, result, "validation")
    rules = {h["name"]: h.get("group_rule") for h in spec.to_dict()["heads"]}
    assert rules == {"shape": fits["shape"].group_rule, "texture": fits["texture"].group_rule,
                     "size": None}
    assert contract.ServingSpec.from_dict(spec.to_dict()) == spec


# --- serving --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged(evaluated, case, members, tmp_path_factory):
    """The ensemble logged as the project's pyfunc in a real SQLite MLflow store, loaded back."""
    result, _ = evaluated
    work = tmp_path_factory.mktemp("model")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("mh", artifact_location=str(work / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    spec = publish.serving_spec(MULTIHEAD, result, "validation")
    base = {"task": MULTIHEAD.key, "classes": list(MULTIHEAD.classes),
            "preprocessing": dataclasses.asdict(Preprocessing()),
            "transforms": [dataclasses.asdict(t) for t in TRANSFORMS],
            "members": [{"name": f"m{i}", "weight": w, "resolution": SIZE}
                        for i, w in enumerate(WEIGHTS)]}
    files = {f"m{i}": ensemble_model.copy_member(p, work / "members", f"m{i}")
             for i, p in enumerate(members)}
    model_uri = ensemble_model.log_ensemble_model(uri, run_id, {**base,
                                                                "serving": spec.to_dict()},
                                                  files, work)
    return ensemble_model.load(model_uri, uri), spec


def test_the_logged_model_answers_every_head_as_the_in_process_ensemble(logged, case):
    model, spec = logged
    columns = [c for c, _ in contract.output_columns(spec)]
    assert columns == [
        "shape_prob_disc", "shape_prob_square", "shape_prob_triangle", "shape_prob_ring",
        "shape_decision", "shape_confidence", "shape_refer", "shape_prediction_set",
        "shape_set_size", "texture_prob_smooth", "texture_prob_stripes", "texture_prob_dots",
        "texture_decision", "texture_confidence", "texture_refer", "texture_prediction_set",
        "texture_set_size", "size_value"]
    assert model.metadata.get_output_schema().input_names() == columns
    served = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in case["files"]]}))
    assert list(served.columns) == columns and len(served) == N_TEST
    raw = case["test"]["ensemble"]
    slices = column_slices(MULTIHEAD)
    for head in spec.heads:
        if not head.is_classification:
            np.testing.assert_allclose(served["size_value"], raw[:, slices["size"]][:, 0],
                                       atol=1e-5)
            continue
        probs = served[[f"{head.name}_prob_{c}" for c in head.classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        calibrated = apply_temperature(raw[:, slices[head.name]], head.temperature)
        np.testing.assert_allclose(probs, calibrated, atol=1e-5)
        assert served[f"{head.name}_decision"].tolist() == [
            head.classes[k] for k in calibrated.argmax(axis=1)]
        assert served[f"{head.name}_refer"].tolist() == (
            served[f"{head.name}_confidence"] < head.refer_cut).tolist()
        member = in_set(calibrated, head.sets)  # each head's own quantile
        assert served[f"{head.name}_set_size"].tolist() == member.sum(axis=1).tolist()
        assert [set(json.loads(t)) for t in served[f"{head.name}_prediction_set"]] == [
            {c for c, keep in zip(head.classes, row) if keep} for row in member]


def test_the_served_check_compares_every_head_and_catches_a_difference(logged, case, evaluated):
    model, spec = logged
    raw = case["test"]["ensemble"]
    expected = contract.answer(raw, spec)
    paths = [str(f) for f in case["files"]]
    assert publish.check_served(model, paths, expected, spec, **QUIET) <= 1e-5
    shifted = raw.copy()
    shifted[:, -1] += 5e-5  # < 1e-5 of a value of 5 mm or more: float32 noise, accepted
    assert raw[:, -1].min() > 5
    assert publish.check_served(model, paths, contract.answer(shifted, spec), spec,
                                **QUIET) <= 1e-5
    shifted[:, -1] += 1e-3  # the size value only
    with pytest.raises(publish.ServedModelMismatch, match="probabilities and values differ"):
        publish.check_served(model, paths, contract.answer(shifted, spec), spec, **QUIET)
    other = dataclasses.replace(spec, heads=tuple(
        dataclasses.replace(h, refer_cut=0.0 if h.refer_cut > 1 else 2.0)  # flip every flag
        if h.name == "texture" else h
        for h in spec.heads))
    with pytest.raises(publish.ServedModelMismatch, match="`texture_refer` differs"):
        publish.check_served(model, paths, contract.answer(raw, other), spec, **QUIET)
    # a set quantile that differs from the logged one changes some set: caught, by column
    sets = spec.heads[0].sets
    other_q = 0.0 if (expected["shape_set_size"] > 1).any() else EVERY_CLASS
    moved = dataclasses.replace(spec, heads=tuple(
        dataclasses.replace(h, sets=dataclasses.replace(sets, quantiles=(other_q,)))
        if h.name == "shape" else h for h in spec.heads))
    assert (contract.answer(raw, moved)["shape_set_size"]
            != expected["shape_set_size"]).any()
    with pytest.raises(publish.ServedModelMismatch, match="`shape_prediction_set` differs"):
        publish.check_served(model, paths, contract.answer(raw, moved), spec, **QUIET)


# --- what the run records and promotion reads ------------------------------------------------
def _prepared(case) -> PreparedData:
    files = case["files"]
    table = pd.DataFrame({"path": [str(f) for f in files], "split": "test",
                          "group": [f"g{i // 2}" for i in range(len(files))],
                          "label": "disc", "row": np.arange(len(files))})
    return PreparedData(task=MULTIHEAD, root=case["root"], table=table, images=case["x_test"],
                        resolution=SIZE, fingerprint="f" * 32, synthetic=True,
                        manifest_path=case["root"] / "manifest.csv")


def _predictions(case, matrix: np.ndarray, spec) -> pd.DataFrame:
    recorded = pd.DataFrame({"path": [str(f) for f in case["files"]],
                             "hash": [f"{i:04x}" for i in range(N_TEST)]})
    return publish.test_predictions(_prepared(case), recorded, case["y_test"],
                                    contract.answer(matrix, spec))


def test_test_predictions_hold_each_heads_truth_and_promotion_compares_mean_skill(
        logged, case):
    _, spec = logged
    good = _predictions(case, case["test"]["ensemble"], spec)
    assert "label" not in good.columns
    assert list(good.columns[:6]) == ["path", "hash", "group", "shape_true", "texture_true",
                                      "size_true"]
    assert not any(Path(p).is_absolute() for p in good["path"])
    assert set(good["shape_true"]) <= set(MULTIHEAD.head("shape").classes)
    np.testing.assert_allclose(good["size_true"], case["y_test"][:, 2])
    # a worse model: every classification answer moved, the sizes shuffled
    worse = case["test"]["ensemble"].copy()
    worse[:, :4] = np.roll(worse[:, :4], 1, axis=1)
    worse[:, 4:7] = np.roll(worse[:, 4:7], 1, axis=1)
    worse[:, 7] = np.random.default_rng(0).permutation(worse[:, 7])
    bad = _predictions(case, worse, spec)
    # through the CSV, as promote reads it
    for frame, name in ((good, "good"), (bad, "bad")):
        frame.to_csv(case["root"] / f"{name}.csv", index=False)
    from orchestrator.ensemble.promote import _read_predictions
    good_csv, bad_csv = (_read_predictions(case["root"] / f"{n}.csv") for n in ("good", "bad"))
    better = compare(good_csv.sample(frac=1.0, random_state=1), bad_csv, "mean_skill",
                     task=MULTIHEAD)
    assert better.better and better.metric == "mean_skill" and better.cases == N_TEST
    assert better.point == pytest.approx(
        multihead_metrics(case["y_test"], case["test"]["ensemble"], MULTIHEAD)["mean_skill"]
        - multihead_metrics(case["y_test"], worse, MULTIHEAD)["mean_skill"])
    assert not compare(bad_csv, good_csv, "mean_skill", task=MULTIHEAD).better
    relabelled = good_csv.copy()
    relabelled.loc[0, "shape_true"] = "ring" if relabelled.loc[0, "shape_true"] != "ring" \
        else "disc"
    with pytest.raises(ConfigError, match="not the same images with the same labels"):
        compare(relabelled, bad_csv, "mean_skill", task=MULTIHEAD)
    with pytest.raises(ConfigError, match="no multi-head task"):
        compare(good_csv, bad_csv, "mean_skill")


def test_the_build_reports_one_classification_report_per_head(case, tmp_path):
    from orchestrator.ensemble.report import write_reports

    ens = Ensemble(("m0", "m1"), WEIGHTS, 0.5, "caruana", (("m0", 0.4), ("m1", 0.5)))
    single = Ensemble(("m0",), (1.0,), 0.4, "best_single")
    choice = Choice("standard6", ens, single, single, {}, {"none": 0.45, "standard6": 0.5})
    table = pd.DataFrame({"model": ["ensemble"], "test_mean_skill": [0.5]})
    paths = write_reports(table, case["y_test"], case["test"]["ensemble"], MULTIHEAD,
                               choice, tmp_path)
    assert [p.name for p in paths] == ["comparison.csv", "selection_trajectory.csv",
                                       "tta_policy_scores.csv",
                                       "classification_report_shape.csv",
                                       "classification_report_texture.csv"]
    shape = pd.read_csv(tmp_path / "classification_report_shape.csv", index_col=0)
    assert {"disc", "square", "triangle", "ring", "accuracy"} <= set(shape.index)
    assert shape.loc["accuracy", "precision"] == pytest.approx(
        multihead_metrics(case["y_test"], case["test"]["ensemble"],
                          MULTIHEAD)["shape_accuracy"])
