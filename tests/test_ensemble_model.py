"""The served model's pyfunc (`orchestrator.tracking.ensemble_model`) across code changes: a model
registered before today's code still loads and answers as it did (`fixtures/`: a single-label
and a multi-head model logged by the code of commit 2401958, and the answers it gave)."""
from __future__ import annotations

import inspect
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import orchestrator.tracking.ensemble_model as ensemble_model

FIXTURE = Path(__file__).parent / "fixtures" / "models_logged_at_2401958.tar.gz"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logged_before(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logged_before")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(out, filter="data")
    return out


@pytest.mark.parametrize("name", ["single_label", "multihead"])
def test_a_model_logged_before_loads_and_answers_as_it_did(logged_before: Path, name: str):
    model = mlflow.pyfunc.load_model(str(logged_before / name))
    # Today's pyfunc answers (the model's own copy of the code is only for a fresh server).
    answering = inspect.getfile(type(model.unwrap_python_model()))
    assert Path(answering).resolve() == Path(ensemble_model.__file__).resolve()
    assert Path(answering).resolve().is_relative_to(REPO_ROOT)
    then = pd.read_csv(logged_before / f"{name}_answers.csv")
    now = model.predict(pd.DataFrame(
        {"path": [str(logged_before / "images" / image) for image in then["image"]]}))
    assert list(now.columns) == list(then.columns[1:])
    for column in now.columns:
        if then[column].dtype.kind == "f":
            np.testing.assert_allclose(now[column].to_numpy(np.float64), then[column],
                                       atol=1e-6, err_msg=column)
        else:
            assert now[column].tolist() == then[column].tolist(), column
    decisions = [c for c in now.columns if c.endswith("decision") or c.endswith("refer")]
    assert any(now[c].nunique() > 1 for c in decisions)  # the cuts split the cases
