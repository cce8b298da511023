"""Routes of the MLflow UI that descriptions and the console link to: a run's page, and a
sweep's trials as a ranked runs table. The UI's URL takes a filter and an
order (`searchFilter`, `orderByKey`) but not the columns shown; those come from a shared view,
an experiment tag `mlflow.sharedViewState.<key>` that a `viewStateShareKey=<key>` link opens
(MLflow 3's "Share" button writes the same). So one link shows the sweep's trials, best first,
with the metric and the searched values as columns: no column to pick by hand."""
from __future__ import annotations

import json
from typing import Sequence

from mlflow import MlflowClient

from orchestrator.keys import (PARENT_TAG, SHARED_VIEW_TAG_PREFIX, TAG_EPOCHS_RUN, TAG_KIND,
                               TAG_STATUS)
from orchestrator.tracking.runs import KIND_TRIAL


def trials_view(parent_run_id: str, metric: str, mode: str,
                searched: Sequence[str]) -> dict:
    """Pure: the view's state as the UI reads it: this sweep's search trials, ordered by their
    best validation metric (best first), with it, their status, epochs and searched values."""
    return {
        "searchFilter": (f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                         f"AND tags.`{TAG_KIND}` = '{KIND_TRIAL}'"),
        "orderByKey": f"metrics.`best_{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": [f"metrics.`best_{metric}`", f"tags.`{TAG_STATUS}`",
                            f"tags.`{TAG_EPOCHS_RUN}`", *(f"params.`{k}`" for k in searched)],
    }


def view_key(parent_run_id: str) -> str:
    return f"medsweep-trials-{parent_run_id}"


def trials_view_link(experiment_id: str, parent_run_id: str) -> str:
    """The UI route that opens the sweep's shared view (after `share_trials_view`)."""
    return (f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={view_key(parent_run_id)}")


def share_trials_view(uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str,
                      searched: Sequence[str]) -> str:
    """Write the sweep's view on its experiment; returns its UI route."""
    state = trials_view(parent_run_id, metric, mode, searched)
    MlflowClient(uri).set_experiment_tag(
        experiment_id, SHARED_VIEW_TAG_PREFIX + view_key(parent_run_id), json.dumps(state))
    return trials_view_link(experiment_id, parent_run_id)


def run_route(experiment_id: str, run_id: str) -> str:
    """A run's page. MLflow 3 opens it in its GenAI mode unless the link asks for the runs
    view."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def run_page(uri: str, run_id: str) -> str:
    """`run_route` of a run known by its id only."""
    return run_route(MlflowClient(uri).get_run(run_id).info.experiment_id, run_id)
