"""A member model's embedding: the output of one named layer of a `build_model` model (`pool`,
the backbone's pooled features, by default), on the identity view only (no TTA), batched. What
the out-of-distribution statistics (`orchestrator.clinical.ood`) are fitted on and scored with."""
from __future__ import annotations

import weakref

import keras
import numpy as np

BATCH = 64

# (model, layer) -> the sub-model ending at that layer; weak keys: a dropped model is freed
_EMBEDDERS: "weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]]" = (
    weakref.WeakKeyDictionary())


def embedder(model: keras.Model, layer: str) -> keras.Model:
    """`model` cut at `layer` (built once per model and layer)."""
    per_model = _EMBEDDERS.setdefault(model, {})
    if layer not in per_model:
        try:
            output = model.get_layer(layer).output
        except ValueError:
            raise ValueError(f"model {model.name} has no layer {layer!r}; its layers: "
                             f"{', '.join(l.name for l in model.layers)}") from None
        per_model[layer] = keras.Model(model.input, output)
    return per_model[layer]


def embeddings(model: keras.Model, images: np.ndarray, layer: str,
               batch_size: int = BATCH) -> np.ndarray:
    """(N, H, W, 3) pixels 0..255 at the model's resolution -> (N, D) float64 embeddings."""
    cut = embedder(model, layer)
    x = np.asarray(images, dtype=np.float32)
    parts = [np.asarray(cut(x[i:i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    out = np.concatenate(parts) if parts else np.zeros((0, cut.output_shape[-1]))
    return out.reshape(len(x), -1).astype(np.float64)

