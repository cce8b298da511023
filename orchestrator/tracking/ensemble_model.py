"""The final ensemble as an MLflow pyfunc model: image paths (or uint8 arrays) in, class
probabilities out, with exactly the training preprocessing (decode, grayscale, CLAHE, resize, RGB;
each member's own `preprocess_input` is inside its Keras model) and the chosen TTA policy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
import pandas as pd

SPEC_FILE = "ensemble.json"
PROJECT = Path(__file__).resolve().parents[2]


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Weighted soft vote of Keras members under one TTA policy."""

    def load_context(self, context) -> None:
        import keras

        from orchestrator import models  # noqa: F401  (registers BackbonePreprocess)
        from tasks.base import Preprocessing

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.preprocessing = Preprocessing(**self.spec["preprocessing"])
        self.members = [(keras.models.load_model(context.artifacts[m["name"]]),
                         int(m["resolution"]), float(m["weight"])) for m in self.spec["members"]]

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        from orchestrator.tta.policies import NamedTransform
        from orchestrator.tta.predict import tta_predict

        images = _decoded_images(model_input)
        transforms = tuple(NamedTransform(**t) for t in self.spec["transforms"])
        total = None
        for model, resolution, weight in self.members:
            batch = self._preprocess(images, resolution)
            probs = weight * tta_predict(model, batch, transforms)
            total = probs if total is None else total + probs
        return pd.DataFrame(total, columns=self.spec["classes"])

    def _preprocess(self, images: list[np.ndarray], resolution: int) -> np.ndarray:
        from orchestrator.data.cache import preprocess_image

        return np.stack([preprocess_image(img, self.preprocessing, resolution)
                         for img in images])


def _decoded_images(model_input: Any) -> list[np.ndarray]:
    """Paths (DataFrame column `path`, or a list) are decoded like the cache decodes them;
    arrays are raw RGB (N, H, W, 3) or gray (N, H, W) uint8 images, turned into cv2's BGR."""
    import cv2

    from orchestrator.data.cache import decode_image

    if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8:
        if model_input.ndim == 4:
            return [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in model_input]
        if model_input.ndim == 3:
            return list(model_input)
    if isinstance(model_input, pd.DataFrame):
        column = "path" if "path" in model_input.columns else model_input.columns[0]
        paths = model_input[column].astype(str).tolist()
    else:
        paths = [str(p) for p in np.ravel(np.asarray(model_input, dtype=object))]
    images = []
    for path in paths:
        img = decode_image(path)
        if img is None:
            raise ValueError(f"image not found or unreadable: {path}")
        images.append(img)
    return images


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
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=EnsembleModel(), artifacts=artifacts,
            code_paths=[str(PROJECT / "orchestrator"), str(PROJECT / "tasks")],
            pip_requirements=_requirements())
    # Leaving `start_run` marked the run FINISHED; it is finished only once the model is checked
    # and registered, so it goes back to RUNNING until then.
    mlflow.MlflowClient(uri).update_run(run_id, status="RUNNING")
    return info.model_uri


def register(uri: str, model_uri: str, name: str, alias: str) -> str:
    """Register the logged model and point `alias` at the new version; returns the version."""
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name)
    mlflow.MlflowClient(uri).set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def load(model_uri: str, uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("tensorflow", "keras", "numpy", "pandas", "opencv-python-headless", "mlflow")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except Exception:
            out.append(name)
    return out


def copy_member(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{name}.keras"
    shutil.copy2(src, dst)
    return dst
