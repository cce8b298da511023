"""One real training trial on a phantom: it learns, reports, saves, and resumes after a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from orchestrator.train.config import TrialConfig
from orchestrator.data.dataset import prepare_dataset
from orchestrator.errors import InjectedFault
from orchestrator.train.artifacts import BEST_MODEL, CHECKPOINT_DIR, VAL_PROBS
from orchestrator.train.trial import load_folded_data, load_trial_data, train_trial
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(task="brain", backbone="baseline_cnn", resolution=48, batch_size=16,
            schedule="full", lr_multiplier=10.0, augment="none", phantom_per_class=60)


@pytest.fixture(scope="module")
def brain_data():
    return load_trial_data(TrialConfig(**BASE), log=lambda _: None)


@pytest.fixture(scope="module")
def trained(brain_data, tmp_path_factory):
    reports = []
    out = tmp_path_factory.mktemp("trial")
    result = train_trial(TrialConfig(**BASE, epochs=6), brain_data, output_dir=out,
                         report=reports.append, log=lambda _: None)
    return result, reports, out


def test_a_trial_on_the_phantom_beats_chance(trained):
    result, _, _ = trained
    chance = 1 / 3
    assert result.metric == "accuracy"
    assert result.best_metric > chance + 0.2, result.history
    assert result.synthetic


def test_every_epoch_is_reported_with_the_task_metric(trained):
    result, reports, _ = trained
    assert [r.epoch for r in reports] == list(range(1, 7))
    for r in reports:
        for key in ("loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr"):
            assert np.isfinite(r.metrics[key]), key
        assert (r.checkpoint_dir / "state.json").exists()
    assert max(r.metrics["val_accuracy"] for r in reports) == pytest.approx(result.best_metric)
    assert sum(r.is_best for r in reports) >= 1


def test_best_model_reproduces_its_saved_validation_probabilities(trained, brain_data):
    _, _, out = trained
    model = keras.models.load_model(out / BEST_MODEL)
    probs = model.predict(brain_data.x_val, verbose=0)
    np.testing.assert_allclose(probs, np.load(out / VAL_PROBS), atol=1e-5)
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["synthetic"] is True and inputs["data_fingerprint"] == brain_data.fingerprint
    assert (out / "val_paths.txt").read_text().split() == list(brain_data.val_paths)


def test_trial_data_never_holds_the_test_split(brain_data):
    prepared = prepare_dataset(get_task("brain"), None, 48, phantom_per_class=60,
                               log=lambda _: None)
    test_paths = set(prepared.paths("test"))
    assert test_paths and not test_paths & set(brain_data.val_paths)
    assert len(brain_data.x_train) == len(prepared.paths("train"))
    assert all("/Testing/" in p for p in test_paths)  # the official Kaggle test split is kept


def test_a_crashed_trial_resumes_from_its_checkpoint(brain_data, tmp_path):
    cfg = TrialConfig(**{**BASE, "schedule": "three_phase"}, epochs=3, fail_at_epoch=2)
    with pytest.raises(InjectedFault):
        train_trial(cfg, brain_data, output_dir=tmp_path, log=lambda _: None)
    state = json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())
    assert state["epochs_done"] == 2
    seen = []
    result = train_trial(cfg, brain_data, output_dir=tmp_path, report=seen.append,
                         resume_from=tmp_path / CHECKPOINT_DIR, log=lambda _: None)
    assert [r.epoch for r in seen] == [3]  # epochs 1-2 were not trained again
    assert result.epochs_run == 3 and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert (tmp_path / BEST_MODEL).exists()


@pytest.mark.slow
def test_cli_prints_one_line_per_epoch_and_labels_synthetic_data(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.train", "brain", "--backbone", "baseline_cnn",
         "--resolution", "48", "--epochs", "2", "--schedule", "full", "--phantom-per-class",
         "60", "--output-dir", str(tmp_path / "cli")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\nepoch ") + proc.stdout.startswith("epoch ") == 2
    assert "SYNTHETIC PHANTOM DATA" in proc.stdout
    assert (tmp_path / "cli" / BEST_MODEL).exists()


@pytest.mark.parametrize("args,needle", [
    (["bogus"], "unknown task 'bogus'"),
    (["brain", "--backbone", "vgg16"], "vgg16"),
    (["brain", "--data-dir", "/nonexistent/brain"], "/nonexistent/brain"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, cli_in_process):
    from orchestrator.train.__main__ import main

    code, _, err = cli_in_process(main, [*args, "--epochs", "1", "--output-dir", tmp_path])
    assert code == 2
    assert needle in err and "Traceback" not in err


@pytest.mark.slow
def test_a_cross_validation_trial_predicts_its_fold_and_keeps_the_last_epoch(tmp_path):
    quiet = lambda _: None  # noqa: E731
    cfg = TrialConfig(**BASE, epochs=2, cv_folds=2, cv_fold=1)
    prepared = prepare_dataset(get_task("brain"), None, 48, phantom_per_class=60, cv_folds=2,
                               manifest_dir=tmp_path / "recorded", log=quiet)
    folded = load_folded_data(cfg, prepared.manifest_path, log=quiet)
    assert not set(folded.paths) & set(prepared.paths("test"))  # the test split is no fold's
    assert len(folded.paths) == len(prepared.table) - len(prepared.paths("test"))
    data = folded.trial_data(1)
    assert len(data.x_train) + len(data.x_val) == len(folded.x)
    out = tmp_path / "fold1"
    result = train_trial(cfg, data, output_dir=out, log=quiet)
    assert (result.best_epoch, result.epochs_run) == (2, 2)  # the last epoch, never chosen
    held = [p for p, f in zip(folded.paths, folded.fold) if f == 1]
    assert (out / "val_paths.txt").read_text().split() == held
    assert np.load(out / VAL_PROBS).shape == (len(held), 3)
    with pytest.raises(Exception, match="cv_fold"):
        TrialConfig(**BASE, cv_folds=2, cv_fold=2)


# --- several heads -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_multihead_trial_beats_chance_on_every_head_and_resumes(tmp_path):
    """The recipe's model on its phantom: MixUp per head, the FFT stream, label smoothing; both
    classifications beat chance and the size beats the mean predictor, on validation. Then a
    crash after epoch 3 resumes from its checkpoint to the same end."""
    from orchestrator.models.heads import as_matrix

    cfg = TrialConfig(task="multihead", backbone="baseline_cnn", resolution=64, batch_size=16,
                      schedule="full", lr_multiplier=10.0, augment="none", epochs=8,
                      phantom_per_class=40, mixup_alpha=0.2, frequency_stream=True,
                      head_weights="regression=2")
    data = load_trial_data(cfg, log=lambda _: None)
    assert data.y_train.shape[1] == 3 and data.y_val.dtype == np.float64
    result = train_trial(cfg, data, output_dir=tmp_path / "a", log=lambda _: None)
    row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    assert result.metric == "mean_skill" and result.best_metric == row["val_mean_skill"]
    assert row["val_shape_balanced_accuracy"] > 0.25 + 0.1
    assert row["val_texture_balanced_accuracy"] > 1 / 3 + 0.05
    assert row["val_size_r2"] > 0.2 and row["val_size_mae"] < np.std(data.y_val[:, 2])
    inputs = json.loads((tmp_path / "a" / "inputs.json").read_text())
    assert inputs["target_scales"]["size"]["mean"] == pytest.approx(data.y_train[:, 2].mean())
    model = keras.models.load_model(tmp_path / "a" / BEST_MODEL)
    saved = np.load(tmp_path / "a" / VAL_PROBS)
    assert saved.shape == (len(data.y_val), 4 + 3 + 1)
    np.testing.assert_allclose(as_matrix(model.predict(data.x_val, verbose=0), data.task), saved,
                               rtol=1e-4, atol=1e-4)

    crashed = cfg.replace(epochs=4, fail_at_epoch=3, mixup_alpha=0.0)
    with pytest.raises(InjectedFault):
        train_trial(crashed, data, output_dir=tmp_path / "b", log=lambda _: None)
    resumed = train_trial(crashed, data, output_dir=tmp_path / "b",
                          resume_from=tmp_path / "b" / CHECKPOINT_DIR, log=lambda _: None)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
