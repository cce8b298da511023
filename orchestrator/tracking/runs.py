"""Sweep parent runs and nested trial runs, through `MlflowClient(uri)` and explicit run ids.

No fluent `mlflow.start_run` state: trial workers are other processes and several runs are
open at once. Files are logged before the tag or status that says a run is complete, so a
FINISHED run always has all its artifacts.
"""
from __future__ import annotations

import json
import math
import numbers
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

if TYPE_CHECKING:
    import pandas as pd

from orchestrator.keys import (  # noqa: E402  (re-exported by the package)
    PARENT_TAG, TAG_BEST_EPOCH, TAG_CHECKPOINT, TAG_EPOCHS_RUN, TAG_FINALIST, TAG_FOLD,
    TAG_INTERVAL_NOTE, TAG_KIND, TAG_NODE, TAG_PROFILE, TAG_REPLICATE, TAG_STATUS,
    TAG_SYNTHETIC, TAG_TASK, TAG_TRIAL_ID, TAG_TUNE_TRIAL_ID)
from orchestrator.naming import short_trial_name  # noqa: E402
KIND_SWEEP, KIND_TRIAL, KIND_ENSEMBLE = "sweep", "trial", "ensemble"
KIND_CV_TRIAL = "cv_trial"  # a finalist retrained on one fold (the second stage of a sweep)
STATUS_RUNNING, STATUS_COMPLETED = "running", "completed"
STATUS_STOPPED_EARLY, STATUS_ERRORED = "stopped_early", "errored"
TRIAL_STATUSES = {  # medsweep.status -> the MLflow run status it implies
    STATUS_RUNNING: "RUNNING",
    STATUS_COMPLETED: "FINISHED",
    STATUS_STOPPED_EARLY: "FINISHED",
    STATUS_ERRORED: "FAILED",
}


# ----------------------------------------------------------------------------- params and tags
SIGNIFICANT_DIGITS = 4


def format_value(value: Any) -> str:
    """How a value reads in params and run names: floats to 4 significant digits, booleans as
    true/false, lists and dicts as JSON of the same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if isinstance(value, Mapping):
        return json.dumps({str(k): _jsonable(v) for k, v in sorted(value.items())})
    if isinstance(value, (list, tuple)):
        return json.dumps([_jsonable(v) for v in value])
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    return value if isinstance(value, (int, str, bool)) or value is None else str(value)


def _param_value(value: Any) -> str:
    """One spelling per value, so re-logging an unchanged config never trips MLflow's
    immutable params; cut to MLflow's length limit the same way every time."""
    return format_value(value)[:MAX_PARAM_VAL_LENGTH]


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Stringified, truncated and batched within MLflow's limit of params per call. A None is
    not logged: an absent param says "not set" better than the text None."""
    items = [Param(str(k), _param_value(v)) for k, v in params.items() if v is not None]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params; re-logging unchanged values (a resumed sweep) is fine, a changed one raises."""
    _log_params(MlflowClient(uri), run_id, params)


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    if tags:
        client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set (or overwrite) tags in one call; unlike params, tags may change."""
    _set_tags(MlflowClient(uri), run_id, tags)


# ---------------------------------------------------------------------------------- sweep runs
def start_sweep_run(uri: str, experiment_id: str, *, run_name: str, tags: Mapping[str, Any],
                    params: Mapping[str, Any], artifacts: Mapping[str, Path]) -> str:
    """Create the sweep's parent run with its params and input files; returns its run id.

    `artifacts` maps the name in the run (may contain '/') to a local file.
    """
    missing = [str(p) for p in artifacts.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"sweep artifacts not found: {', '.join(missing)}")
    client = MlflowClient(uri)
    run_tags = {str(k): str(v) for k, v in tags.items()} | {TAG_KIND: KIND_SWEEP}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=run_tags).info.run_id
    _log_params(client, run_id, params)
    for name, path in artifacts.items():
        _log_file_as(client, run_id, Path(path), name)
    return run_id


def _log_file_as(client: MlflowClient, run_id: str, path: Path, artifact_file: str) -> None:
    """Log `path` under the name `artifact_file` (MLflow keeps the local file name)."""
    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / name)
        client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=folder or None)


def log_json_artifact(uri: str, run_id: str, obj: Any, artifact_file: str) -> None:
    """Log `obj` as pretty JSON; paths and numpy scalars are written as strings."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    MlflowClient(uri).log_text(run_id, text + "\n", artifact_file)


def log_table_artifact(uri: str, run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """Log a DataFrame as CSV (MLflow's `log_table` writes JSON, which nobody else reads)."""
    MlflowClient(uri).log_text(run_id, df.to_csv(index=False), artifact_file)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run: FINISHED, FAILED or KILLED."""
    MlflowClient(uri).set_terminated(run_id, RunStatus.to_string(RunStatus.from_string(status)))


def reopen_run(uri: str, run_id: str) -> None:
    """Set a terminated run back to RUNNING (a resumed sweep); its end time stays until the
    next `finish_run`."""
    MlflowClient(uri).update_run(run_id, status="RUNNING")


# ---------------------------------------------------------------------------------- trial runs
def _filter(tags: Mapping[str, str]) -> str:
    """An MLflow filter string matching every tag; dotted keys need backticks."""
    clauses = []
    for key, value in tags.items():
        quote = "'" if "'" not in value else '"'
        if "`" in key or quote in value:
            raise ValueError(f"cannot search for tag {key!r} = {value!r}")
        clauses.append(f"tags.`{key}` = {quote}{value}{quote}")
    return " AND ".join(clauses)


def find_runs_by_tag(uri: str, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Active runs in the experiment carrying all `tags`, oldest first (all result pages)."""
    client, runs, token = MlflowClient(uri), [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=_filter(tags),
                                  run_view_type=ViewType.ACTIVE_ONLY,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def list_trial_runs(uri: str, experiment_id: str, parent_run_id: str,
                    kind: str = KIND_TRIAL) -> list[Run]:
    """The trial runs (or, with KIND_CV_TRIAL, the cross-validation runs) of a sweep."""
    return find_runs_by_tag(uri, experiment_id, {PARENT_TAG: parent_run_id, TAG_KIND: kind})


def get_or_create_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str,
                            run_name: str, params: Mapping[str, Any], kind: str = KIND_TRIAL,
                            tags: Mapping[str, str] | None = None) -> str:
    """The trial's run id, never a duplicate: a retried or resumed trial continues its own run.

    `trial_id` is Tune's (`63832_00005`), kept in `medsweep.tune_trial_id` to find the run
    again; `medsweep.trial_id` is the name people read (`t05`), unless `tags` gives another.

    A found run that had failed or been killed is set RUNNING again; a finished one is left as
    it is. Params are (re)logged: unchanged values pass, a changed value raises.
    """
    client = MlflowClient(uri)
    found = find_runs_by_tag(uri, experiment_id, {PARENT_TAG: parent_run_id,
                                                  TAG_TUNE_TRIAL_ID: trial_id}) or \
        find_runs_by_tag(uri, experiment_id, {PARENT_TAG: parent_run_id,
                                              TAG_TRIAL_ID: trial_id})  # a sweep older than it
    if found:
        run = found[0]
        run_id = run.info.run_id
        if run.info.status in ("FAILED", "KILLED"):
            client.update_run(run_id, status="RUNNING")
            _set_tags(client, run_id, {TAG_STATUS: STATUS_RUNNING})
    else:
        tags = {PARENT_TAG: parent_run_id, TAG_KIND: kind, TAG_TUNE_TRIAL_ID: trial_id,
                TAG_TRIAL_ID: short_trial_name(trial_id), TAG_STATUS: STATUS_RUNNING,
                **(tags or {})}
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    _log_params(client, run_id, params)
    return run_id


def tune_trial_id(run: Run) -> str | None:
    """The Tune id a trial run was opened for (a sweep older than `medsweep.tune_trial_id`
    kept it in `medsweep.trial_id`)."""
    tags = run.data.tags
    return tags.get(TAG_TUNE_TRIAL_ID) or tags.get(TAG_TRIAL_ID)


def log_epoch_metrics(uri: str, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """One batch per epoch (step = epoch); non-numeric, NaN and infinite values are skipped."""
    now = int(time.time() * 1000)
    batch = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items()
             if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)]
    if batch:
        MlflowClient(uri).log_batch(run_id, metrics=batch)


def log_trial_files(uri: str, run_id: str, directory: Path, names: Iterable[str],
                    artifact_path: str | None = None) -> list[str]:
    """Log those of `names` that exist in `directory`; returns the names logged."""
    client, logged = MlflowClient(uri), []
    for name in names:
        path = Path(directory) / name
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
            logged.append(name)
    return logged


def set_trial_status(uri: str, run_id: str, status: str,
                     extra_tags: Mapping[str, Any] | None = None) -> None:
    """Tag the trial's outcome and set the run status it implies; calling it again is harmless.

    Call after `log_trial_files`: FINISHED must mean every file is in.
    """
    if status not in TRIAL_STATUSES:
        raise ValueError(f"trial status {status!r} is not one of {', '.join(TRIAL_STATUSES)}")
    client = MlflowClient(uri)
    _set_tags(client, run_id, {**(extra_tags or {}), TAG_STATUS: status})
    target = TRIAL_STATUSES[status]
    if client.get_run(run_id).info.status == target:
        return
    if target == "RUNNING":
        client.update_run(run_id, status=target)
    else:
        client.set_terminated(run_id, target)


# ------------------------------------------------------------------------------- reading back
def get_run(uri: str, run_id: str) -> Run:
    """The run, or a clear error naming the id and the store."""
    from mlflow.exceptions import MlflowException

    from orchestrator.errors import ConfigError

    try:
        return MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} in {uri}") from None


def best_metric(uri: str, run_id: str, key: str, mode: str) -> float:
    """Best value of a per-epoch metric over the run's history (NaN if never logged)."""
    values = [m.value for m in MlflowClient(uri).get_metric_history(run_id, key)
              if not math.isnan(m.value)]
    if not values:
        return float("nan")
    return max(values) if mode == "max" else min(values)


def metric_history(uri: str, run_id: str, keys: Iterable[str]) -> pd.DataFrame:
    """Every logged point of `keys`: columns step, key, value (for training curves)."""
    import pandas as pd

    client = MlflowClient(uri)
    rows = [{"step": m.step, "key": key, "value": m.value}
            for key in keys for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=["step", "key", "value"])


def download(uri: str, run_id: str, artifact_path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(MlflowClient(uri).download_artifacts(run_id, artifact_path, str(dst)))


def start_child_run(uri: str, experiment_id: str, parent_run_id: str, *, run_name: str,
                    kind: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
    """A nested run of another kind (the ensemble) under a sweep's parent run."""
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={PARENT_TAG: parent_run_id, TAG_KIND: kind,
                                  **{k: str(v) for k, v in tags.items()}})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, Any]) -> None:
    """Final figures (no step); NaN and inf skipped as in `log_epoch_metrics`."""
    log_epoch_metrics(uri, run_id, metrics, step=0)


def log_file(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    MlflowClient(uri).log_artifact(run_id, str(path), artifact_path)
