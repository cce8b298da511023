"""A Ray actor pool that scores candidate models under test-time augmentation.

Thin wrapper: each actor loads one model at a time and calls `tta.tta_predict_each`; the images
go to the object store once and every actor reads them zero-copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import ray
from ray.util import ActorPool

Log = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """A trained model to score: its name (the trial id) and its saved `.keras` file."""

    name: str
    model_path: str
    resolution: int


@dataclass(frozen=True)
class Scored:
    name: str
    probs: np.ndarray | None  # (T, N, C) per-transform probabilities; None if it failed
    error: str = ""


class InferenceWorker:
    """Holds TensorFlow in its own process; one model loaded per call, then dropped."""

    def __init__(self, cpu_threads: int) -> None:
        from orchestrator.devices import configure_devices

        configure_devices(cpu_threads=cpu_threads, mixed_precision="off")

    def score(self, candidate: Candidate, images: np.ndarray, transforms: tuple,
              batch_size: int) -> Scored:
        import keras

        from orchestrator import models  # noqa: F401  (registers BackbonePreprocess for loading)
        from orchestrator.tta import tta_predict_each

        try:
            model = keras.models.load_model(candidate.model_path)
        except Exception as err:  # a missing or corrupt checkpoint is skipped, never fatal
            return Scored(candidate.name, None, f"cannot load {candidate.model_path}: {err}")
        probs = tta_predict_each(model, images, transforms, batch_size=batch_size)
        keras.backend.clear_session()
        return Scored(candidate.name, np.asarray(probs, dtype=np.float32))


def score_candidates(candidates: Sequence[Candidate], images_by_resolution: dict[int, np.ndarray],
                     transforms: tuple, *, actors: int | None = None, cpus_per_actor: float = 1,
                     gpus_per_actor: float = 0, batch_size: int = 32,
                     log: Log = print) -> dict[str, Scored]:
    """Score every candidate in parallel; results keyed by candidate name."""
    refs = {r: ray.put(x) for r, x in images_by_resolution.items()}
    slots = int(ray.available_resources().get("CPU", 1) // max(cpus_per_actor, 1e-9))
    count = max(1, min(len(candidates), actors or slots or 1))
    remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(InferenceWorker)
    workers = [remote.remote(max(1, int(cpus_per_actor))) for _ in range(count)]
    pool = ActorPool(workers)
    jobs = pool.map_unordered(
        lambda actor, c: actor.score.remote(c, refs[c.resolution], transforms, batch_size),
        list(candidates))
    out: dict[str, Scored] = {}
    for scored in jobs:
        out[scored.name] = scored
        log(f"scored {scored.name}" + (f": SKIPPED ({scored.error})" if scored.error else ""))
    for worker in workers:
        ray.kill(worker)
    return out
