"""Guarded promotion (orchestrator/ensemble/promote.py): the pure comparison here; the registry
round trip (refuse, force, accept) on real sweeps in tests/test_ensemble_build.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from orchestrator.clinical.bootstrap import paired_difference, resample_indices
from orchestrator.clinical.weighted_metrics import weighted_metrics
from orchestrator.ensemble.build import build_ensemble
from orchestrator.ensemble.promote import (TAG_DIFFERENCE, TAG_OVER, TAG_PROMOTION, compare,
                                           promote)
from orchestrator.sweep.runner import run_sweep
from orchestrator.errors import ConfigError

from test_console import TF_START_UP  # what a quiet command never prints

CLASSES = ("a", "b", "c")


def _frame(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> pd.DataFrame:
    n = len(labels)
    frame = pd.DataFrame({"path": [f"img{i}.png" for i in range(n)],
                          "hash": [f"{i:04x}" for i in range(n)],
                          "group": [f"g{i // 2}" for i in range(n)],
                          "label": [CLASSES[k] for k in labels]})
    for k, c in enumerate(CLASSES):
        frame[f"prob_{c}"] = probs[:, k]
    frame["decision"] = [CLASSES[k] for k in probs.argmax(axis=1)]
    return frame.sample(frac=1.0, random_state=seed)  # row order must not matter


def _probs(labels: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    right = rng.random(len(labels)) < accuracy
    predicted = np.where(right, labels, (labels + 1) % 3)
    probs = np.full((len(labels), 3), 0.1)
    probs[np.arange(len(labels)), predicted] = 0.8
    return probs


def test_a_clearly_better_candidate_has_an_interval_above_zero():
    labels = np.arange(120) % 3
    good, bad = _probs(labels, 0.95, 1), _probs(labels, 0.5, 2)
    result = compare(_frame(good, labels, 3), _frame(bad, labels, 4), "balanced_accuracy",
                     resamples=1000)
    assert result.better and result.low > 0 and result.point == pytest.approx(
        np.mean(good.argmax(1) == labels) - np.mean(bad.argmax(1) == labels), abs=0.02)
    reverse = compare(_frame(bad, labels), _frame(good, labels), "balanced_accuracy")
    assert not reverse.better and reverse.high < 0
    same = compare(_frame(good, labels, 5), _frame(good, labels, 6), "balanced_accuracy")
    assert not same.better and same.point == 0.0
    assert "+0.000 [+0.000, +0.000]" in same.text() and "120 test images" in same.text()


def test_different_test_images_or_labels_cannot_be_compared():
    labels = np.arange(30) % 3
    probs = _probs(labels, 0.9, 0)
    other = _frame(probs, labels)
    other.loc[other.index[0], "hash"] = "ffff"
    with pytest.raises(ConfigError, match="not the same images"):
        compare(_frame(probs, labels), other, "accuracy")
    relabelled = _frame(probs, (labels + 1) % 3)
    with pytest.raises(ConfigError, match="same labels"):
        compare(_frame(probs, labels), relabelled, "accuracy")


def test_paired_intervals_are_narrower_than_the_difference_of_independent_ones():
    """Pairing removes the case-to-case variation both models share."""
    labels = np.arange(200) % 2
    rng = np.random.default_rng(0)
    hard = rng.random(200) < 0.3  # both models miss the hard cases
    a = np.where(hard, 1 - labels, labels)
    b = np.where(hard | (rng.random(200) < 0.05), 1 - labels, labels)
    pa, pb = np.eye(2)[a] * 0.8 + 0.1, np.eye(2)[b] * 0.8 + 0.1
    draws = resample_indices(labels, None, 1000, 0)

    def acc(y, p):
        return float(np.mean(p.argmax(1) == y))

    paired = paired_difference(lambda y, p, counts: weighted_metrics(y, p, counts)["accuracy"],
                               labels, pa, pb, draws)
    independent_a = np.quantile([acc(labels[i], pa[i]) for i in draws], [0.025, 0.975])
    independent_b = np.quantile([acc(labels[i], pb[i]) for i in draws], [0.025, 0.975])
    assert paired["low"] > 0  # a is better, and the paired interval shows it
    assert independent_a[0] < independent_b[1]  # while the separate intervals overlap


def _one_patient(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(group="patient-1")


def test_a_test_split_of_too_few_groups_gives_no_paired_interval():
    labels = np.arange(120) % 3
    good, bad = _probs(labels, 0.95, 1), _probs(labels, 0.5, 2)
    one = compare(_one_patient(_frame(good, labels)), _one_patient(_frame(bad, labels)),
                  "balanced_accuracy")
    assert one.point > 0.3 and one.groups == 1 and np.isnan(one.low) and not one.better
    assert one.text().startswith("candidate - champion balanced_accuracy = +0.")
    assert "[no interval] (test holds 1 group: no interval; 120 test images in 1 group(s))" \
        in one.text()
    twelve = _frame(good, labels).assign(group=[f"p{i % 12}" for i in range(120)])
    few = compare(twelve, twelve.assign(**{f"prob_{c}": bad[:, k]
                                           for k, c in enumerate(CLASSES)}), "accuracy")
    assert few.groups == 12 and few.note == "test holds 12 groups (< 20): no interval"


def _registered(tmp_path, candidate: pd.DataFrame, champion: pd.DataFrame) -> str:
    """A local registry holding two versions of medsweep-brain tested on the same images, each
    with its run's test_predictions.csv, as a sweep leaves them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("promote",
                                          artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("medsweep-brain")
    for alias, frame in (("champion", champion), ("candidate", candidate)):
        run = client.create_run(experiment).info.run_id
        client.log_text(run, frame.to_csv(index=False), "test_predictions.csv")
        version = client.create_model_version("medsweep-brain",
                                              client.get_run(run).info.artifact_uri, run_id=run)
        client.set_model_version_tag("medsweep-brain", version.version, "test_fingerprint",
                                     "f" * 64)
        client.set_registered_model_alias("medsweep-brain", alias, version.version)
    return uri


def test_promote_refuses_when_the_test_split_holds_too_few_groups(tmp_path):
    labels = np.arange(120) % 3
    good, bad = _probs(labels, 0.95, 1), _probs(labels, 0.5, 2)
    uri = _registered(tmp_path, _one_patient(_frame(good, labels)),
                      _one_patient(_frame(bad, labels)))
    client = mlflow.MlflowClient(uri)
    lines = []
    assert promote("brain", tracking_uri=uri, log=lines.append) is False
    assert any(line.startswith("candidate - champion accuracy = +") and "[no interval]" in line
               for line in lines), lines
    assert "refused: the test split holds 1 group(s), fewer than the 20 a paired interval " \
           "needs, so nothing shows the candidate better" in "\n".join(lines)
    assert str(client.get_model_version_by_alias("medsweep-brain", "champion").version) == "1"

    assert promote("brain", tracking_uri=uri, force=True, log=lines.append) is True
    champion = client.get_model_version_by_alias("medsweep-brain", "champion")
    assert str(champion.version) == "2"
    assert champion.tags[TAG_PROMOTION].startswith("forced (the test split holds 1 group(s)")
    assert "[no interval]" in champion.tags[TAG_DIFFERENCE]


# --------------------------------------------------------------------------------------------
# The registry round trip on real sweeps: first champion, accepted, refused, forced
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DATA = {"resolution": 32, "phantom_per_class": 60, "label_smoothing": 0.0}


def _promote_cli(uri: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "orchestrator.ensemble", "promote", "brain",
                           "--tracking-uri", uri, *extra], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_promote_accepts_a_better_candidate_refuses_a_worse_one_and_records_force(
        tmp_path, cli_in_process):
    from orchestrator.ensemble.__main__ import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def promote_cli(*extra: str) -> subprocess.CompletedProcess:
        """The same CLI in this process (the first call, above, is `python -m`'s own)."""
        code, out, err = cli_in_process(main, ["promote", "brain", "--tracking-uri", uri,
                                               *extra])
        return subprocess.CompletedProcess([], code, out, err)

    quiet = dict(log=lambda _: None)
    common = dict(profile="smoke", num_samples=1, cv_folds=0, tracking_uri=uri,
                  storage_path=str(tmp_path / "runs"), **quiet)
    client = mlflow.MlflowClient(uri)
    # an untrained model (learning rate near zero, one epoch) becomes the first champion
    bad = run_sweep("brain", max_epochs=1, space_overrides={
        **DATA, "epochs": 1, "lr_multiplier": 1e-4}, **common)
    first = _promote_cli(uri)
    assert first.returncode == 0, first.stderr
    assert [n for n in TF_START_UP if n in first.stderr] == []  # quiet unless --verbose
    assert "no champion yet" in first.stdout
    champion = client.get_model_version_by_alias("medsweep-brain", "champion")
    assert champion.tags[TAG_PROMOTION] == "first champion"

    # a trained one on the same data is better, with a paired interval above 0
    good = run_sweep("brain", max_epochs=6, space_overrides={
        **DATA, "epochs": 6, "lr_multiplier": 10.0}, **common)
    accepted = promote_cli()
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "promoted:" in accepted.stdout and "candidate - champion accuracy = +" in \
        accepted.stdout
    champion = client.get_model_version_by_alias("medsweep-brain", "champion")
    assert champion.run_id == good.ensemble.run_id
    assert champion.tags[TAG_PROMOTION] == "paired bootstrap"

    # the untrained one again as the candidate: refused, the interval printed
    build_ensemble(bad.parent_run_id, tracking_uri=uri, policies=("none",), **quiet)
    refused = promote_cli()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused: the interval does not lie above 0" in refused.stdout
    assert re.search(r"candidate - champion accuracy = [+-]\d\.\d{3} \[[+-]\d\.\d{3}, "
                     r"[+-]\d\.\d{3}\]", refused.stdout)
    assert client.get_model_version_by_alias("medsweep-brain", "champion").run_id == \
        good.ensemble.run_id

    forced = promote_cli("--force")
    assert forced.returncode == 0 and "forced:" in forced.stdout
    champion = client.get_model_version_by_alias("medsweep-brain", "champion")
    candidate = client.get_model_version_by_alias("medsweep-brain", "candidate")
    assert champion.version == candidate.version
    assert champion.tags[TAG_PROMOTION].startswith("forced (the interval")
    assert champion.tags[TAG_OVER] == str(accepted_version(client, good))


def accepted_version(client, result) -> str:
    (version,) = [str(v.version) for v in client.search_model_versions("name='medsweep-brain'")
                  if v.run_id == result.ensemble.run_id]
    return version


def test_promote_without_a_candidate_is_one_line_and_exit_2(tmp_path, cli_in_process):
    from orchestrator.ensemble.__main__ import main

    code, _, err = cli_in_process(main, ["promote", "brain", "--tracking-uri",
                                         f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "no medsweep-brain@candidate" in err
