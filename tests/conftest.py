"""Test-wide environment: no network, a private cache, quiet TensorFlow.

Set before TensorFlow or any project module reads them; project code reads these lazily.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="medsweep-tests-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MEDSWEEP_OFFLINE"] = "1"  # never try to download ImageNet weights in tests
os.environ["MEDSWEEP_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["KERAS_HOME"] = str(_SESSION_DIR / "keras")
os.environ.pop("MEDSWEEP_WEIGHTS_DIR", None)


import pytest  # noqa: E402


@pytest.fixture
def private_keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache of this test's own, offline, no weights folder: whatever weights a
    test finds, it put there itself."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("MEDSWEEP_OFFLINE", "1")
    monkeypatch.delenv("MEDSWEEP_WEIGHTS_DIR", raising=False)
    return home


@pytest.fixture
def rebuild_with_permuted_test_labels(tmp_path):
    """A function (sweep run id, tracking URI) -> the ensemble rebuilt after every test label in
    the sweep's recorded manifest moved to another class (the files unchanged); the manifest is
    put back afterwards. What no choice may notice."""
    def rebuild(run_id: str, uri: str):
        import mlflow
        import pandas as pd

        from orchestrator.ensemble.build import build_ensemble

        client = mlflow.MlflowClient(uri)
        original = Path(client.download_artifacts(run_id, "manifest.csv",
                                                  str(tmp_path / "original")))
        frame = pd.read_csv(original, dtype=str, keep_default_na=False)
        test = frame["split"] == "test"
        classes = sorted(frame.loc[test, "label"].unique())
        rotated = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
        frame.loc[test, "label"] = frame.loc[test, "label"].map(rotated)
        (tmp_path / "permuted").mkdir()
        frame.to_csv(tmp_path / "permuted" / "manifest.csv", index=False)
        client.log_artifact(run_id, str(tmp_path / "permuted" / "manifest.csv"))
        try:
            return build_ensemble(run_id, tracking_uri=uri, log=lambda _: None)
        finally:
            client.log_artifact(run_id, str(original))

    return rebuild
