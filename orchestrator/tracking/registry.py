"""The MLflow model registry: register a logged model with its card, read and move aliases."""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from orchestrator.console import library_notices_off, verbose

CANDIDATE, CHAMPION = "candidate", "champion"


def registered_name(task_name: str) -> str:
    return f"medsweep-{task_name}"


def register(uri: str, model_uri: str, name: str, alias: str, *, card: str,
             tags: Mapping[str, str]) -> str:
    """Register the logged model, give the version its card (Markdown description) and tags,
    then point `alias` at it; returns the version. The alias moves last, so a client resolving
    it never sees a version without its card."""
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    with _registry_notices_off():  # "Created version N": the caller says it
        version = str(mlflow.register_model(model_uri, name).version)
    client.update_model_version(name, version, description=card)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if not client.get_registered_model(name).description:
        client.update_registered_model(
            name, description="MedSweep ensembles: each version's description is its model "
            f"card. `@{CANDIDATE}` is the newest sweep's ensemble; `@{CHAMPION}` moves only "
            "when `python -m orchestrator.ensemble promote` finds the candidate better.")
    client.set_registered_model_alias(name, alias, version)
    return version


@contextlib.contextmanager
def _registry_notices_off() -> Iterator[None]:
    """MLflow's registry prints its notices on its own stream (`eprint`), not through a logger;
    MLflow's switch for that stream turns them off for the call, unless verbose."""
    from mlflow.utils import logging_utils

    if verbose():
        yield
        return
    logging_utils.disable_logging()
    try:
        with library_notices_off("mlflow"):
            yield
    finally:
        logging_utils.enable_logging()


def version_by_alias(uri: str, name: str, alias: str) -> ModelVersion | None:
    try:
        return mlflow.MlflowClient(uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(uri: str, name: str, alias: str, version: str,
              tags: Mapping[str, str] | None = None) -> None:
    """Tag the version first (e.g. how it was promoted), then move the alias to it."""
    client = mlflow.MlflowClient(uri)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, alias, version)
