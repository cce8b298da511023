"""MLflow for an external evaluation: which registered version a URI names, what that version
recorded (its spec, its internal test answers), the evaluation run, and the result written
back on the version (a tag per site, a line in its description).

Plain runs rather than `mlflow.models.evaluate`: its default evaluator computes its own
figures from one prediction column and has no place for group-bootstrap intervals or a served
answer with several columns. What it does add, the link to the model, is kept: the figures are
also logged against the version's logged model (`Metric.model_id`) with the site as the
dataset, so the model's page lists them per site, and the run records the site as its input.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException

from orchestrator import keys
from orchestrator.errors import ConfigError

SPEC_ARTIFACT = "artifacts/ensemble.json"  # inside the logged model (`ensemble_model.SPEC_FILE`)
KIND_EVALUATION = "external_evaluation"


@dataclass(frozen=True)
class VersionRef:
    """A registered model version, resolved once: what the evaluation is linked to."""

    name: str
    version: str
    run_id: str  # the ensemble run that logged it
    model_id: str | None  # its logged model (MLflow 3), where the figures are linked
    description: str
    tags: Mapping[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve_version(uri: str, model_uri: str) -> VersionRef:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` -> the version; anything else, or a
    version the registry does not hold, is one clear error."""
    found = _MODELS_URI.match(model_uri)
    if not found:
        raise ConfigError(f"{model_uri}: an external evaluation is recorded on a registered "
                          "version: give models:/NAME/VERSION or models:/NAME@ALIAS")
    client = MlflowClient(uri)
    try:
        mv = (client.get_model_version(found["name"], found["version"]) if found["version"]
              else client.get_model_version_by_alias(found["name"], found["alias"]))
    except MlflowException as err:
        raise ConfigError(f"cannot find {model_uri} in {uri}: "
                          f"{str(err).splitlines()[0]}") from None
    model_id = mv.source.removeprefix("models:/") if mv.source.startswith("models:/m-") else None
    return VersionRef(mv.name, str(mv.version), mv.run_id, model_id, mv.description or "",
                      dict(mv.tags))


def read_spec(uri: str, ref: VersionRef) -> dict[str, Any]:
    """The version's spec file (task, classes, preprocessing, serving), without loading its
    Keras members: enough to read the data and check its classes first."""
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(f"{ref.uri}/{SPEC_ARTIFACT}", dst_path=tmp)
        return json.loads(Path(path).read_text())


def internal_answers(uri: str, ref: VersionRef, artifact: str) -> pd.DataFrame | None:
    """The version's recorded answers on its own test split (group, label, served columns);
    None for a version logged before they were recorded."""
    client = MlflowClient(uri)
    if artifact not in {a.path for a in client.list_artifacts(ref.run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(ref.run_id, artifact, tmp)
        return pd.read_csv(path, dtype={"group": str, "label": str}, keep_default_na=False)


def start_evaluation_run(uri: str, ref: VersionRef, *, site: str, fingerprint: str,
                         task: str, source: str, params: Mapping[str, Any]) -> str:
    """A run beside the version's ensemble run (same experiment), tagged with what it
    evaluated on which data; the site's data recorded as its input."""
    from orchestrator.tracking.runs import log_params

    client = MlflowClient(uri)
    experiment_id = client.get_run(ref.run_id).info.experiment_id
    tags = {keys.TAG_KIND: KIND_EVALUATION, keys.TAG_TASK: task,
            keys.TAG_EVALUATED_MODEL: ref.name, keys.TAG_EVALUATED_VERSION: ref.version,
            keys.TAG_EVALUATED_RUN: ref.run_id, keys.TAG_SITE: site,
            keys.TAG_DATA_FINGERPRINT: fingerprint}
    run_id = client.create_run(experiment_id, run_name=f"external {site} v{ref.version}",
                               tags=tags).info.run_id
    log_params(uri, run_id, params)
    dataset = Dataset(name=site, digest=fingerprint[:36], source_type="local",
                      source=json.dumps({"uri": source}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(
        keys.DATASET_CONTEXT, "external_evaluation")])])
    return run_id


def log_linked_metrics(uri: str, run_id: str, metrics: Mapping[str, float], ref: VersionRef,
                       site: str, fingerprint: str) -> None:
    """The figures in the run, each also linked to the version's logged model and to the site
    as its dataset (MLflow 3's per-dataset model metrics); NaN and inf are left out."""
    now, client = int(time.time() * 1000), MlflowClient(uri)
    batch = [Metric(str(k), float(v), now, 0, model_id=ref.model_id, dataset_name=site,
                    dataset_digest=fingerprint[:36])
             for k, v in metrics.items() if v == v and abs(float(v)) != float("inf")]
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start:start + 500])


def record_on_version(uri: str, ref: VersionRef, site: str, headline: str, line: str) -> None:
    """The tag `external.<site>` = the headline figure, and `line` appended to the version's
    description (its model card), once per site: a re-run replaces its own line."""
    client = MlflowClient(uri)
    client.set_model_version_tag(ref.name, ref.version, keys.version_external_tag(site),
                                 headline)
    current = client.get_model_version(ref.name, ref.version).description or ""
    marker = f"- External validation, {site}:"
    kept = [row for row in current.splitlines() if not row.startswith(marker)]
    if not any(row == EXTERNAL_HEADING for row in kept):
        kept += ["", EXTERNAL_HEADING, ""]
    text = "\n".join(kept).rstrip("\n") + f"\n{marker} {line}\n"
    client.update_model_version(ref.name, ref.version, description=text)


EXTERNAL_HEADING = "## External validation"
