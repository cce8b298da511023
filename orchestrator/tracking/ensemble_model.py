"""The final ensemble as an MLflow pyfunc model: images in (base64 files over REST, uint8
tensors, or local paths; `orchestrator.serving.inputs`), calibrated probabilities, the
validated decision, its confidence and the refer flag out. Exactly the training preprocessing
(decode, grayscale, CLAHE, resize, RGB; each member's own `preprocess_input` is inside its Keras
model) and the chosen TTA policy; the temperature, threshold and refer cut travel in its spec.
A multi-head member's dict output is read as one (N, D) matrix in its heads' order
(`orchestrator.tta.predict.flat_outputs`), averaged like probabilities, and answered per head.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema

from orchestrator.console import library_notices_off
from orchestrator.serving import contract, inputs

SPEC_FILE = "ensemble.json"
PROJECT = Path(__file__).resolve().parents[2]


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Weighted soft vote of Keras members under one TTA policy."""

    # The signature is explicit (`signature()`): MLflow's type-hint wrapper would only warn.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import keras

        from orchestrator.models import classifier  # noqa: F401  (registers BackbonePreprocess)
        from tasks.base import Preprocessing

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.preprocessing = Preprocessing(**self.spec["preprocessing"])
        self.members = [(keras.models.load_model(context.artifacts[m["name"]]),
                         int(m["resolution"]), float(m["weight"])) for m in self.spec["members"]]
        self.ood_statistics = self._ood_statistics(context.artifacts)

    def _ood_statistics(self, artifacts) -> list | None:
        """Each member model's OOD statistics (one file each), or None for a model logged
        without them (its spec has no `ood`)."""
        from orchestrator.clinical.ood import OodStatistics

        if not self.spec.get("serving", {}).get("ood"):
            return None
        return [OodStatistics.load(artifacts[ood_artifact(m["name"])])
                for m in self.spec["members"]]

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        from mlflow.exceptions import MlflowException

        spec = self.serving_spec()
        try:
            images = inputs.decode_inputs(model_input, spec.input_limits, self.preprocessing)
        except inputs.InputError as err:  # the server answers it as a JSON error, status 400
            raise MlflowException.invalid_parameter_value(str(err)) from None
        batches = self.preprocessed(images)  # once per resolution, for the vote and the score
        if spec.ood is None:
            return contract.answer(self.raw_probabilities(batches), spec)
        scores, constant = self.ood_scores(batches, spec.ood.layer)
        return contract.answer(self.raw_probabilities(batches), spec, scores, constant)

    def ood_scores(self, batches: dict[int, np.ndarray], layer: str
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's OOD score (each member model's Mahalanobis distance on the identity
        view, weighted as its vote) and which images are constant as the first member sees
        them (after preprocessing)."""
        from orchestrator.clinical import ood
        from orchestrator.models.embeddings import embeddings

        scores, constant = [], None
        for (model, resolution, _), stats in zip(self.members, self.ood_statistics):
            batch = batches[resolution]
            constant = ood.constant_images(batch) if constant is None else constant
            scores.append(ood.mahalanobis(stats, embeddings(model, batch, layer)))
        return ood.combine(scores, [w for _, _, w in self.members]), constant

    def serving_spec(self) -> contract.ServingSpec:
        """What follows the members' vote (and the input limits), as logged with the model."""
        return contract.ServingSpec.from_dict(self.spec["serving"])

    def raw_probabilities(self, batches: dict[int, np.ndarray]) -> np.ndarray:
        """The members' weighted soft vote under the TTA policy, before calibration: (N, C), or
        for a multi-head model (N, D), each classification head's probabilities and each
        regression head's value in its unit (`tta_predict` flattens the members' dict outputs
        in head order)."""
        from orchestrator.tta.policies import NamedTransform
        from orchestrator.tta.predict import tta_predict

        transforms = tuple(NamedTransform(**t) for t in self.spec["transforms"])
        total = None
        for model, resolution, weight in self.members:
            probs = weight * tta_predict(model, batches[resolution], transforms)
            total = probs if total is None else total + probs
        return total

    def preprocessed(self, images: list[np.ndarray]) -> dict[int, np.ndarray]:
        """Decoded images -> resolution -> (N, R, R, 3): each image preprocessed once per
        resolution the members read (under cross-validation a member's K fold models share
        theirs)."""
        from orchestrator.data.cache import preprocess_image

        return {r: np.stack([preprocess_image(img, self.preprocessing, r) for img in images])
                for r in sorted({resolution for _, resolution, _ in self.members})}


def log_ensemble_model(uri: str, run_id: str, spec: Mapping[str, Any],
                       member_files: Mapping[str, Path], workdir: Path) -> str:
    """Log the pyfunc model under the run (artifact path `model`); returns its model URI.

    The project's `orchestrator` and `tasks` packages travel with the model (`code_paths`), so
    `mlflow models serve --env-manager local` needs nothing but this model and the dependencies.
    """
    spec_path = workdir / SPEC_FILE
    spec_path.write_text(json.dumps(spec, indent=1))
    artifacts = {"spec": str(spec_path), **{k: str(v) for k, v in member_files.items()}}
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id), library_notices_off("mlflow"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=EnsembleModel(), artifacts=artifacts,
            code_paths=[str(PROJECT / "orchestrator"), str(PROJECT / "tasks")],
            pip_requirements=_requirements(),
            signature=signature(contract.ServingSpec.from_dict(spec["serving"])
                                if "serving" in spec else spec["classes"]),
            input_example=input_example())
    # Leaving `start_run` marked the run FINISHED; it is finished only once the model is checked
    # and registered, so it goes back to RUNNING until then.
    mlflow.MlflowClient(uri).update_run(run_id, status="RUNNING")
    return info.model_uri


def signature(served) -> ModelSignature:
    """One encoded image per row in `image` (base64 in JSON), or a local file in `path`; out,
    the columns `contract.output_columns` lists. `served`: the serving spec, or a single head's
    classes."""
    columns = (contract.output_columns(served) if isinstance(served, contract.ServingSpec)
               else contract.class_columns(served))
    columns_in = Schema([ColSpec(DataType.binary, inputs.IMAGE, required=False),
                         ColSpec(DataType.string, inputs.PATH, required=False)])
    outputs = Schema([ColSpec(getattr(DataType, kind), name)
                      for name, kind in columns])
    return ModelSignature(inputs=columns_in, outputs=outputs)


def input_example() -> pd.DataFrame:
    """A generated gray gradient as a PNG, never a patient's image (the example is stored
    with the model, where anyone who can read the registry can see it)."""
    import cv2

    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    _, png = cv2.imencode(".png", ramp)
    return pd.DataFrame({inputs.IMAGE: [png.tobytes()]})


def load(model_uri: str, uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("tensorflow", "keras", "numpy", "pandas", "opencv-python-headless", "scipy", "pillow",
             "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "mlflow")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except Exception:
            out.append(name)
    return out


def ood_artifact(member: str) -> str:
    """The artifact key of a member model's OOD statistics."""
    return f"ood_{member}"


def copy_member(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{name}.keras"
    shutil.copy2(src, dst)
    return dst
