"""Where the MLflow store is, whether it answers, its experiment and how to open its UI."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from mlflow import MlflowClient

from orchestrator.errors import ConfigError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PROJECT_DIR = Path(__file__).resolve().parents[2]


def _mlflow_folder(workdir: Path | None, *parts: str) -> Path:
    folder = (Path(workdir) if workdir else Path.cwd()).resolve().joinpath("mlflow", *parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def default_tracking_uri(workdir: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute SQLite file under `<workdir>/mlflow/`.

    Absolute, because Ray workers run with their trial folder as the working directory.
    """
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    return f"sqlite:///{_mlflow_folder(workdir) / 'mlflow.db'}"


def default_artifact_root(workdir: Path | None = None) -> str:
    """`<workdir>/mlflow/artifacts` as a file URI, next to the default SQLite store."""
    return _mlflow_folder(workdir, "artifacts").as_uri()


def _local_store_path(uri: str) -> Path | None:
    """The file or folder behind a sqlite:/file: URI or a plain path; None for anything else."""
    if uri.startswith("sqlite:"):
        path = uri.removeprefix("sqlite:").removeprefix("///").split("?", 1)[0]
        return None if path in ("", "//", ":memory:") else Path(path)
    if uri.startswith("file:"):
        return Path(urllib.request.url2pathname(uri.removeprefix("file:").removeprefix("//")))
    return None if "://" in uri else Path(uri)


def _check_server(uri: str, timeout_s: float) -> None:
    """One GET of /health with urllib: MLflow's REST client retries for minutes by default."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as err:  # it answered; only a server error is fatal
        if err.code < 500:
            return
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, unreachable, timed out, malformed
        reason = str(getattr(err, "reason", err))
    raise ConfigError(f"MLflow tracking server {uri} does not answer: {reason}; start it "
                      "(mlflow/ script) or pass --tracking-uri")


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, before any trial starts, if the store cannot be reached or written."""
    _check_scheme(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_s)
        return
    path = _local_store_path(uri)
    if path is None:
        return  # databases and other schemes: nothing cheap to check here
    sqlite = uri.startswith("sqlite:")
    if not path.is_absolute():  # each Ray worker would resolve it in its own trial folder
        fixed = f"sqlite:///{path.absolute()}" if sqlite else path.absolute().as_uri()
        raise ConfigError(f"MLflow tracking URI {uri} is a relative path; Ray trials run in "
                          f"other folders: give an absolute one ({fixed})")
    folder = path.parent if sqlite else path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ConfigError(f"MLflow tracking store {uri}: folder {folder} is not writable "
                          f"({err.strerror or err}); pass --tracking-uri") from None


def _check_scheme(uri: str) -> None:
    """A scheme MLflow has no store for is one line naming the ones it has, not a traceback
    from deep in its registry once the sweep has started. The table is MLflow's own (the
    registry that builds its stores), so plugins that add schemes are honoured."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores
    except ImportError:  # another MLflow layout: let MLflow itself say it later
        return
    try:
        stores.get_store_builder(uri)
    except MlflowException:
        schemes = ", ".join(f"{s}://" for s in sorted(getattr(stores, "_registry", {})) if s)
        raise ConfigError(f"MLflow tracking URI {uri}: MLflow has no store for scheme "
                          f"{uri.split(':', 1)[0]!r}; it accepts {schemes} (or a plain folder "
                          "path)") from None


def ui_command(uri: str, artifact_root: str | None) -> str:
    """The shell command that opens the MLflow UI on this store; a server's URL is its UI."""
    if uri.startswith(("http://", "https://")):
        return uri
    command = ["mlflow", "ui", "--backend-store-uri", uri]
    if artifact_root:
        command += ["--default-artifact-root", artifact_root]
    return shlex.join(command)


def runs_table_url(uri: str, experiment_id: str) -> str:
    """Where the experiment's runs table opens."""
    return ui_url(uri, runs_view_link(experiment_id))


def ui_url(uri: str, route: str) -> str:
    """A UI route (`#/experiments/...`) at the server's own URL, or at `mlflow ui`'s default
    address for a local store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/{route}"


def local_artifact_root(uri: str) -> str | None:
    """`artifacts/` next to a SQLite file, as a file URI; None for other stores.

    For the default store this is `default_artifact_root(workdir)`. Without it MLflow puts a
    SQLite store's artifacts in `./mlruns` of whatever the working directory is.
    """
    db = _local_store_path(uri) if uri.startswith("sqlite:") else None
    return None if db is None else (db.absolute().parent / "artifacts").as_uri()


def open_store(client_uri: str) -> None:
    """Open the tracking store once: a new SQLite database gets its tables, an existing one has
    its migrations checked, a server is reached. Seconds on a small machine, paid here (the
    sweep does it while Ray starts); MLflow keeps the store for the process's later calls."""
    MlflowClient(client_uri).search_experiments(max_results=1)


def ensure_experiment(client_uri: str, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if missing and restored if deleted.

    `artifact_location` None: `local_artifact_root(client_uri)`, else the server's default.
    """
    client = MlflowClient(client_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location or local_artifact_root(client_uri)
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    for key, value in experiment_tags(experiment_id, name).items():
        client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


from orchestrator.keys import NOTE_TAG as EXPERIMENT_NOTE_TAG  # noqa: E402


def runs_view_link(experiment_id: str) -> str:
    """The UI route of the experiment's runs table. MLflow 3.17's UI opens an experiment on its
    GenAI page unless the URL (or the visitor's last click on "Model training") asks for the
    machine-learning view; experiment tags do not change that."""
    return f"#/experiments/{experiment_id}?workflowType=machine_learning"


def experiment_tags(experiment_id: str, name: str) -> dict[str, str]:
    return {
        EXPERIMENT_NOTE_TAG: (
            f"MedSweep sweeps ({name}): **[open the runs table]({runs_view_link(experiment_id)})**"
            " to compare trials. Each sweep is a parent run; its trials, cross-validation runs "
            "and the final ensemble are its children, and the ensemble's registered model "
            "carries a model card."),
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def environment_params() -> dict[str, str]:
    """Versions and the project's git commit for the sweep's params; imports no TensorFlow."""
    status = _git("status", "--porcelain")
    return {
        "version.python": sys.version.split()[0],
        "version.ray": _version("ray"),
        "version.tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
        "version.keras": _version("keras"),
        "version.mlflow": _version("mlflow", "mlflow-skinny"),
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)),
    }
