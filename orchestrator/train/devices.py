"""Per-process TensorFlow device setup: threads, GPU memory, mixed precision.

Call `configure_devices` before TensorFlow runs any op. Thread counts and GPU memory settings
are fixed once TF initialises its runtime; a later call does not fail but reports in the
returned dict what it could not change, so a trial can log it.
"""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from orchestrator.errors import ConfigError

PRECISION_CHOICES = ("auto", "on", "off")


def configure_devices(
    *,
    cpu_threads: int | None = None,
    mixed_precision: str = "auto",
    memory_growth: bool = True,
    gpu_memory_limit_mb: int | None = None,
) -> dict:
    """Apply the settings and describe what was applied.

    cpu_threads: intra- and inter-op threads (two trials on two cores must not each start two
    threads per op); None or 0 leaves TensorFlow's default. gpu_memory_limit_mb: a logical-device
    cap for a trial given a fraction of a GPU (Ray does not enforce fractional GPUs; TF must);
    otherwise memory_growth. mixed_precision: "auto" is mixed_float16 only when a GPU is present;
    "on" forces it even on CPU (correct but slower there, reported as a note).
    """
    if mixed_precision not in PRECISION_CHOICES:
        raise ConfigError(
            f"mixed_precision must be one of {PRECISION_CHOICES}, got {mixed_precision!r}"
        )
    if cpu_threads is not None and cpu_threads < 0:
        raise ConfigError(f"cpu_threads must be >= 0, got {cpu_threads}")
    if gpu_memory_limit_mb is not None and gpu_memory_limit_mb < 1:
        raise ConfigError(f"gpu_memory_limit_mb must be >= 1, got {gpu_memory_limit_mb}")

    gpus = tf.config.list_physical_devices("GPU")
    not_applied: list[str] = []
    notes: list[str] = []
    if cpu_threads:
        _set_threads(cpu_threads, not_applied)
    gpu_memory = _configure_gpu_memory(gpus, memory_growth, gpu_memory_limit_mb, not_applied)

    mixed = mixed_precision == "on" or (mixed_precision == "auto" and bool(gpus))
    policy = "mixed_float16" if mixed else "float32"
    keras.config.set_dtype_policy(policy)
    if policy == "mixed_float16" and not gpus:
        notes.append("mixed_float16 without a GPU: correct, but slower than float32 on CPU")
    unseen = _assigned_but_unseen(gpus)
    if unseen:
        notes.append(unseen)

    return {
        "cpus": [cpu.name for cpu in tf.config.list_physical_devices("CPU")],
        "gpus": [gpu.name for gpu in gpus],
        "precision_policy": keras.config.dtype_policy().name,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpu_memory": gpu_memory,
        "not_applied": not_applied,
        "notes": notes,
    }


def _assigned_but_unseen(gpus: list) -> str | None:
    """A process given GPUs (Ray sets CUDA_VISIBLE_DEVICES to the ids it assigned) that
    TensorFlow cannot use: no NVIDIA driver or CUDA libraries on the node, or a GPU that is only
    a Ray resource (the fake multi-node cluster). Training goes on, on CPU, and says so."""
    assigned = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if gpus or assigned in ("", "-1", "NoDevFiles"):
        return None
    return (f"GPU {assigned} assigned to this process (CUDA_VISIBLE_DEVICES) but TensorFlow "
            "sees no GPU (no NVIDIA driver or CUDA libraries, or a GPU that is only a Ray "
            "resource): training on CPU")


def _set_threads(threads: int, not_applied: list[str]) -> None:
    """TF accepts an unchanged value after initialisation, so repeating a call is harmless."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as e:
        not_applied.append(f"cpu_threads={threads}: TensorFlow already initialised ({e})")


def _configure_gpu_memory(
    gpus: list, memory_growth: bool, limit_mb: int | None, not_applied: list[str]
) -> str | None:
    """A memory cap (a logical device) wins over growth: TF refuses both on one GPU."""
    if not gpus:
        return None
    if limit_mb is not None:
        applied: str | None = f"limit {limit_mb} MB"
    else:
        applied = "growth" if memory_growth else None
    for gpu in gpus:
        if _already_configured(gpu, memory_growth, limit_mb):
            continue  # a reused Ray actor's next trial: TF would refuse to set it again
        try:
            if limit_mb is not None:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)]
                )
            elif memory_growth:
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as e:
            not_applied.append(f"GPU memory {applied} on {gpu.name}: {e}")
            applied = None
    return applied


def _already_configured(gpu, memory_growth: bool, limit_mb: int | None) -> bool:
    """Whether this process already holds exactly the requested GPU memory setting."""
    if limit_mb is not None:
        current = tf.config.get_logical_device_configuration(gpu) or []
        return len(current) == 1 and current[0].memory_limit == limit_mb
    return memory_growth and bool(tf.config.experimental.get_memory_growth(gpu))


def gpu_memory_limit_for_fraction(fraction: float) -> int | None:
    """MB of the first GPU that a trial holding `fraction` of it may use (None: whole GPU).

    Ray schedules fractional GPUs but does not enforce them; the trial caps TensorFlow instead.
    """
    if not 0.0 < fraction < 1.0:
        return None
    total_mb = gpu_total_memory_mb()
    return None if total_mb is None else max(1, int(total_mb * fraction))


def gpu_total_memory_mb() -> int | None:
    """The first GPU's memory in MB, from nvidia-smi (which every NVIDIA driver installs);
    None without one."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20, check=False)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None
