"""Test-wide environment: no network, a private cache, quiet TensorFlow.

Set before TensorFlow or any project module reads them; project code reads these lazily.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="medsweep-tests-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MEDSWEEP_OFFLINE"] = "1"  # never try to download ImageNet weights in tests
os.environ["MEDSWEEP_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["KERAS_HOME"] = str(_SESSION_DIR / "keras")
os.environ.pop("MEDSWEEP_WEIGHTS_DIR", None)


import pytest  # noqa: E402

# How `make test` shares its two pytest-xdist workers. The tests reading the one CLI smoke
# sweep (`cli_smoke_sweep`, a session fixture) run in the same worker, so that sweep runs once.
SHARED_SWEEP = ("tests/test_console.py", "tests/test_sweep_cv.py",
                "tests/test_sweep.py::test_cli_smoke_sweep_records_parent_children_epochs_and_"
                "artifacts")
# Modules whose tests share no module fixture, each test a sweep of its own: spread test by test.
SPREAD_MODULES = ("tests/test_sweep.py",)


def _worker_scope(nodeid: str) -> str:
    """What must run in one worker: the shared sweep's tests; a module otherwise (its
    module-scoped fixtures, a sweep among them, are made once); a test of SPREAD_MODULES alone."""
    module = nodeid.split("::", 1)[0]
    if module in SHARED_SWEEP or nodeid.split("[", 1)[0] in SHARED_SWEEP:
        return "cli smoke sweep"
    return nodeid if module in SPREAD_MODULES else module


def pytest_xdist_make_scheduler(config, log):
    """`_worker_scope` as xdist's scheduling unit. (`--dist loadgroup` would say this with
    marks, but its grouping has no effect under pytest 9: the nodeids it rewrites are not the
    ones reported.)"""
    from xdist.scheduler import LoadScopeScheduling

    class WorkerScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _worker_scope(nodeid)

    return WorkerScopes(config, log)


def pytest_collection_modifyitems(config, items):
    """Modules holding slow tests first (each module's order kept): the workers take the long
    units early and finish together."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


# Ray: the in-process sweeps of one xdist worker share its local Ray. The first starts it
# (`connect_ray`), the later ones find it running (a start costs seconds of both cores); no
# fixture stops it. A test that needs a Ray of its own (its own resources, a cluster by
# address) or none asks for `own_ray`.
@pytest.fixture
def own_ray():
    """No Ray in this process when the test starts (one left running by an earlier test is
    stopped), and none when it ends."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_ends_with_the_test():
    """`mlflow.set_tracking_uri` sets a process global and MLFLOW_TRACKING_URI (so that
    subprocesses inherit it): undone after each test, or a later test in the same worker, a
    CLI run in process among them, talks to a store or server that is gone."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules and os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)


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
def rebuild_with_changed_manifest(tmp_path):
    """A function (sweep run id, tracking URI, change) -> the ensemble rebuilt after `change`
    (a manifest frame -> the frame to record instead) rewrote the sweep's recorded manifest
    (the files unchanged); the manifest is put back afterwards."""
    def rebuild(run_id: str, uri: str, change):
        import mlflow
        import pandas as pd

        from orchestrator.ensemble.build import build_ensemble

        client = mlflow.MlflowClient(uri)
        original = Path(client.download_artifacts(run_id, "manifest.csv",
                                                  str(tmp_path / "original")))
        frame = change(pd.read_csv(original, dtype=str, keep_default_na=False))
        (tmp_path / "changed").mkdir()
        frame.to_csv(tmp_path / "changed" / "manifest.csv", index=False)
        client.log_artifact(run_id, str(tmp_path / "changed" / "manifest.csv"))
        try:
            return build_ensemble(run_id, tracking_uri=uri, log=lambda _: None)
        finally:
            client.log_artifact(run_id, str(original))

    return rebuild


@pytest.fixture
def rebuild_with_permuted_test_labels(rebuild_with_changed_manifest):
    """A function (sweep run id, tracking URI) -> the ensemble rebuilt after every test label in
    the sweep's recorded manifest moved to another class (the files unchanged). What no choice
    may notice."""
    def rotate(frame):
        test = frame["split"] == "test"
        classes = sorted(frame.loc[test, "label"].unique())
        rotated = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
        frame.loc[test, "label"] = frame.loc[test, "label"].map(rotated)
        return frame

    return lambda run_id, uri: rebuild_with_changed_manifest(run_id, uri, rotate)


ROOT = Path(__file__).resolve().parents[1]
# What a user's shell has: TensorFlow's and Ray's defaults, no tracking URI or cluster address.
def user_env() -> dict:
    """The environment a user's shell gives a CLI, with this checkout importable."""
    from orchestrator.console import VERBOSE_ENV

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", VERBOSE_ENV, "RAY_ADDRESS",
                "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def cli_smoke_sweep(tmp_path_factory):
    """`python -m orchestrator.sweep brain --profile smoke` once, from a user's shell, on the
    brain phantom in the real layout with a training image copied into Testing/, and two
    `--set` overrides: every stage (search, cross-validation, the ensemble's TTA actors).
    Shared by what it records (tests/test_sweep.py, tests/test_sweep_cv.py) and what it prints
    (tests/test_console.py).
    Returns (its folder, the finished process, the copied training image)."""
    from orchestrator.data.phantoms import write_phantom
    from tasks import get_task

    cwd = tmp_path_factory.mktemp("cli-smoke-sweep")
    data = write_phantom(get_task("brain"), cwd / "brain", per_class=16, seed=0)
    train_img = sorted((data / "Training" / "glioma").glob("*.jpg"))[0]
    shutil.copy(train_img, data / "Testing" / "glioma" / "Te-gl_copy.jpg")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "brain", "--profile",
                           "smoke", "--data-dir", str(data), "--set", "dropout=0.3", "--set",
                           "label_smoothing=[0.05]"], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return cwd, proc, train_img


@pytest.fixture
def cli_in_process(capsys, monkeypatch):
    """A function (module's `main`, argv, cwd) -> (exit code, stdout, stderr): a CLI run in this
    process, where a refusal costs no interpreter start. Each CLI's entry point (`python -m`)
    is run as a subprocess elsewhere in its tests; what `main` sets in the environment
    (`console.set_verbose`) is undone afterwards."""
    saved = dict(os.environ)

    def run(main, argv: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    os.environ.clear()
    os.environ.update(saved)
