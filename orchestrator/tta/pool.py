"""A Ray actor pool that scores candidate models under test-time augmentation.

Thin wrapper: each actor loads one model at a time and calls `predict.tta_predict_each`; the images
go to the object store once and every actor reads them zero-copy. Actors are spread over the
cluster's nodes. Each loads its model from the trial's checkpoint in the sweep's storage path
(S3 or a shared folder, reached from any node) when there is one, else from a copy that the
driver puts in the object store: an actor never reads a path that exists on the driver only.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import ray
from ray.util import ActorPool

from orchestrator.console import Progress, detail, verbose
from orchestrator.train.artifacts import BEST_MODEL

Log = Callable[[str], None]
MODEL_FILE = BEST_MODEL  # what an actor loads from a trial's checkpoint folder


@dataclass(frozen=True)
class Candidate:
    """A trained model to score: its name (the trial id), its `.keras` file on the driver and,
    when the sweep's storage still holds it, the URI of its trial checkpoint."""

    name: str
    model_path: str
    resolution: int
    checkpoint: str | None = None  # a local path or s3:// URI of a folder holding MODEL_FILE
    images_key: object = None  # which image set it scores (None: the one of its resolution)

    @property
    def images(self) -> object:
        return self.resolution if self.images_key is None else self.images_key


@dataclass(frozen=True)
class Scored:
    name: str
    probs: np.ndarray | None  # (T, N, C) per-transform probabilities; None if it failed
    error: str = ""
    node: str = ""  # the Ray node id of the actor that scored it
    source: str = ""  # where the actor read the model from


class InferenceWorker:
    """Holds TensorFlow in its own process; one model loaded per call, then dropped."""

    def __init__(self, cpu_threads: int, gpu_share: float = 0.0) -> None:
        from orchestrator import console

        console.import_tensorflow()  # without its C++ start-up lines, unless --verbose
        from orchestrator.train.devices import configure_devices, gpu_total_memory_mb

        devices = configure_devices(cpu_threads=cpu_threads, mixed_precision="off")
        total = gpu_total_memory_mb() if devices["gpus"] and gpu_share > 0 else None
        self.gpu_memory_mb = total * min(gpu_share, 1.0) if total else None  # None: CPU
        self.node = ray.get_runtime_context().get_node_id()

    def score(self, candidate: Candidate, model_copy: list | None, images: np.ndarray,
              transforms: tuple, batch_size: int | None) -> Scored:
        """`model_copy`: [ObjectRef of the file's bytes], or None to read the checkpoint.
        `batch_size` None: model inputs per pass sized for this actor's device."""
        import keras

        from orchestrator.tta.predict import tta_predict_each
        from orchestrator.tta.sizing import device_batch_size

        try:
            model, source = self._load(candidate, model_copy)
        except Exception as err:  # a missing or corrupt checkpoint is skipped, never fatal
            where = candidate.checkpoint if model_copy is None and candidate.checkpoint \
                else candidate.model_path
            return Scored(candidate.name, None, f"cannot load {where}: {err}", self.node)
        batch_size = batch_size or device_batch_size(self.gpu_memory_mb, images.shape[1],
                                                     len(transforms))
        probs = tta_predict_each(model, images, transforms, batch_size=batch_size)
        keras.backend.clear_session()
        return Scored(candidate.name, np.asarray(probs, dtype=np.float32), node=self.node,
                      source=source)

    @staticmethod
    def _load(candidate: Candidate, model_copy: list | None):
        import keras
        from ray.train import Checkpoint

        from orchestrator.models import classifier  # noqa: F401  (registers BackbonePreprocess for loading)

        if model_copy is None:
            if not candidate.checkpoint:
                raise FileNotFoundError("no such file, and no checkpoint to read instead")
            with Checkpoint(candidate.checkpoint).as_directory() as folder:
                return (keras.models.load_model(Path(folder) / MODEL_FILE),
                        f"checkpoint {candidate.checkpoint}")
        with tempfile.TemporaryDirectory(prefix="medsweep-model-") as tmp:
            path = os.path.join(tmp, MODEL_FILE)
            Path(path).write_bytes(ray.get(model_copy[0]))
            return keras.models.load_model(path), "copy from the driver"


def checkpoint_reachable(uri: str | None) -> bool:
    """Whether the checkpoint's model file exists, seen from here (the driver)."""
    if not uri:
        return False
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri) if "://" in uri \
            else (pyarrow.fs.LocalFileSystem(), os.path.abspath(uri))
        return fs.get_file_info(f"{path.rstrip('/')}/{MODEL_FILE}").type == \
            pyarrow.fs.FileType.File
    except Exception:  # unknown scheme, no credentials, bucket gone: use the driver's copy
        return False


class ScoringPool:
    """Inference actors started once (validation, then test reuse them), spread over nodes.

    Use as a context manager; the actors are killed on exit.
    """

    def __init__(self, size: int, *, cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                 batch_size: int | None = None, log: Log = print) -> None:
        """`batch_size`: model inputs per TTA pass; None: each actor sizes it for its device
        (`sizing.device_batch_size`: about 128 on CPU, what fits on a GPU)."""
        remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                            scheduling_strategy="SPREAD")(InferenceWorker)
        self.workers = [remote.remote(max(1, int(cpus_per_actor)), gpus_per_actor)
                        for _ in range(size)]
        self.batch_size, self.log = batch_size, log

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            ray.kill(worker)

    def score(self, candidates: Sequence[Candidate], images: dict[object, np.ndarray],
              transforms: tuple) -> dict[str, Scored]:
        """Score every candidate in parallel on its image set (`Candidate.images`: by default
        the images of its resolution; a fold model its held-out fold); keyed by name."""
        refs = {key: ray.put(x) for key, x in images.items()}

        def submit(actor, c: Candidate):
            # Called when an actor is free, so a driver copy enters the object store only then.
            copy = None
            if not checkpoint_reachable(c.checkpoint) and os.path.isfile(c.model_path):
                copy = [ray.put(Path(c.model_path).read_bytes())]
            return actor.score.remote(c, copy, refs[c.images], transforms, self.batch_size)

        out: dict[str, Scored] = {}
        # On a terminal, one line redrawn as models finish; piped, the scoring table that
        # follows says it. Verbose: a line per model instead (below).
        progress = Progress(len(candidates), "scoring", "models", piped=False, tty=not verbose())
        for scored in ActorPool(self.workers).map_unordered(submit, list(candidates)):
            out[scored.name] = scored
            progress.update(len(out))
            line = (f"scored {scored.name} on node {scored.node[:8]}"
                    + (f" from {_short(scored.source)}" if scored.source else ""))
            if scored.error:  # always said; a model scored is counted in the scoring table
                self.log(f"{line}: SKIPPED ({scored.error})")
            else:
                detail(self.log, line)
        return out


def _short(source: str) -> str:
    """Where a model came from, for the console: the checkpoint's path only when verbose."""
    return source if verbose() or not source.startswith("checkpoint ") else "its checkpoint"


def pool_size(candidates: int, actors: int | None, cpus_per_actor: float) -> int:
    """`actors` if given, else as many as the cluster's CPUs hold; never more than candidates.

    The cluster's total, not what is free this instant: a trial's actor that is still releasing
    its CPU would otherwise cost the pool a node (actors wait for their slot anyway)."""
    slots = int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_actor, 1e-9))
    return max(1, min(candidates, actors or slots or 1))
