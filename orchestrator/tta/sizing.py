"""How many model inputs one TTA pass sends through the model, for the device that runs it.
Pure arithmetic (no TensorFlow), so the Ray pool, the benchmark and the tests share it.

`tta_predict_each(..., batch_size)` keeps `model.predict`'s meaning: model inputs per forward
pass; a pass holds ceil(batch_size / T) source images and their T variants.
"""
from __future__ import annotations

from orchestrator.errors import ConfigError

CPU_INPUTS_PER_PASS = 128  # 2 CPU cores: faster than 32, and larger passes gain little more
GPU_MAX_INPUTS_PER_PASS = 1024  # beyond this a GPU is busy anyway; only latency grows
# Inference activations of a ResNet50-class model in float32 at 224 px, with headroom; scales
# with the pixel count. An estimate (not measured on a GPU here): half the memory stays free.
GPU_MB_PER_INPUT_AT_224 = 40.0
GPU_MEMORY_SHARE = 0.5


def device_batch_size(gpu_memory_mb: float | None, resolution: int, num_transforms: int) -> int:
    """Model inputs per TTA pass: about CPU_INPUTS_PER_PASS on CPU (`gpu_memory_mb` None or 0),
    on a GPU the most that fit in GPU_MEMORY_SHARE of the memory the caller may use (capped at
    GPU_MAX_INPUTS_PER_PASS). Always whole images: a multiple of `num_transforms`, at least one
    image's worth."""
    if resolution < 1 or num_transforms < 1:
        raise ConfigError(f"resolution and num_transforms must be >= 1, got {resolution}, "
                          f"{num_transforms}")
    if not gpu_memory_mb or gpu_memory_mb <= 0:
        images = round(CPU_INPUTS_PER_PASS / num_transforms)
    else:
        per_input = GPU_MB_PER_INPUT_AT_224 * (resolution / 224) ** 2
        inputs = min(GPU_MAX_INPUTS_PER_PASS, gpu_memory_mb * GPU_MEMORY_SHARE / per_input)
        images = int(inputs // num_transforms)
    return max(1, images) * num_transforms
