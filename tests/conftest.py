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
