"""MLflow tracking for sweeps: one parent run per sweep, one nested run per trial.

The only package in the project that imports mlflow. `store` knows where the tracking store
is and whether it answers; `runs` creates and fills the runs.
"""
from __future__ import annotations

from orchestrator.tracking.runs import (
    KIND_CV_TRIAL, KIND_ENSEMBLE, KIND_SWEEP, KIND_TRIAL, PARENT_TAG, STATUS_COMPLETED, STATUS_ERRORED,
    STATUS_RUNNING, STATUS_STOPPED_EARLY, TAG_KIND, TAG_PROFILE, TAG_STATUS, TAG_SYNTHETIC,
    TAG_BEST_EPOCH, TAG_CHECKPOINT, TAG_EPOCHS_RUN, TAG_FINALIST, TAG_FOLD, TAG_REPLICATE, TAG_NODE, TAG_TASK,
    TAG_TRIAL_ID, TAG_TUNE_TRIAL_ID, TAG_INTERVAL_NOTE,
    TRIAL_STATUSES, best_metric, download, metric_history, find_runs_by_tag, get_run, log_file, log_metrics,
    start_child_run, finish_run, format_value,
    get_or_create_trial_run, list_trial_runs, log_epoch_metrics, log_json_artifact, log_params,
    log_table_artifact, log_trial_files, reopen_run, set_tags, set_trial_status,
    start_sweep_run, tune_trial_id)
from orchestrator.tracking.store import (
    TRACKING_URI_ENV, check_tracking_uri, default_artifact_root, default_tracking_uri,
    ensure_experiment, environment_params, local_artifact_root, open_store, runs_table_url,
    ui_command, ui_url)
from orchestrator.tracking.views import run_page, run_route, share_trials_view, trials_view_link

__all__ = [
    "KIND_CV_TRIAL", "KIND_ENSEMBLE", "KIND_SWEEP", "KIND_TRIAL", "TAG_FINALIST", "TAG_FOLD", "TAG_REPLICATE", "PARENT_TAG", "STATUS_COMPLETED",
    "STATUS_ERRORED", "STATUS_RUNNING", "STATUS_STOPPED_EARLY", "TAG_KIND", "TAG_PROFILE",
    "TAG_STATUS", "TAG_SYNTHETIC", "TAG_TASK", "TAG_BEST_EPOCH", "TAG_CHECKPOINT",
    "TAG_EPOCHS_RUN", "TAG_NODE", "TAG_INTERVAL_NOTE", "best_metric", "download", "get_run",
    "log_file",
    "log_metrics", "metric_history", "start_child_run", "TAG_TRIAL_ID", "TAG_TUNE_TRIAL_ID",
    "TRACKING_URI_ENV",
    "TRIAL_STATUSES", "check_tracking_uri", "default_artifact_root", "default_tracking_uri",
    "ensure_experiment", "environment_params", "find_runs_by_tag", "finish_run",
    "get_or_create_trial_run", "list_trial_runs", "local_artifact_root", "log_epoch_metrics",
    "log_json_artifact", "log_params", "open_store", "log_table_artifact", "log_trial_files", "reopen_run",
    "set_tags", "set_trial_status", "start_sweep_run", "ui_command", "format_value",
    "runs_table_url", "ui_url", "share_trials_view", "trials_view_link",
    "run_page", "run_route", "tune_trial_id",
]
