"""Device setup on this CPU-only machine; thread settings need a fresh TensorFlow process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from orchestrator.train.devices import configure_devices
from orchestrator.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

FRESH_PROCESS = """
import json
import keras
import tensorflow as tf
from orchestrator.train.devices import configure_devices

first = configure_devices(cpu_threads=1, mixed_precision="on")
dense = keras.layers.Dense(2)
out = dense(tf.ones((1, 3)))  # TensorFlow is initialised from here on
again = configure_devices(cpu_threads=1, mixed_precision="on")
changed = configure_devices(cpu_threads=2, mixed_precision="off")
print(json.dumps({
    "first": first, "again": again, "changed": changed,
    "intra": tf.config.threading.get_intra_op_parallelism_threads(),
    "inter": tf.config.threading.get_inter_op_parallelism_threads(),
    "dense_compute_dtype": dense.compute_dtype, "out_dtype": out.dtype.name,
}))
"""


@pytest.fixture(scope="module")
def fresh() -> dict:
    # CUDA_VISIBLE_DEVICES="": the CPU path, even when the suite runs on a GPU host.
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the CPU-only path")
def test_auto_on_cpu_reports_no_gpu_and_float32():
    previous = keras.config.dtype_policy()
    try:
        report = configure_devices()
    finally:
        keras.config.set_dtype_policy(previous)
    assert report["gpus"] == []
    assert report["precision_policy"] == "float32"
    assert report["gpu_memory"] is None
    assert report["not_applied"] == []


def test_threads_are_applied_before_tensorflow_starts(fresh):
    assert fresh["first"]["not_applied"] == []
    assert fresh["first"]["intra_op_threads"] == fresh["first"]["inter_op_threads"] == 1
    assert fresh["intra"] == fresh["inter"] == 1


def test_mixed_precision_on_without_gpu_works_and_says_so(fresh):
    assert fresh["first"]["precision_policy"] == "mixed_float16"
    assert any("without a GPU" in note for note in fresh["first"]["notes"])
    assert fresh["dense_compute_dtype"] == "float16" and fresh["out_dtype"] == "float16"


def test_repeating_a_call_after_initialisation_is_harmless(fresh):
    assert fresh["again"]["not_applied"] == []
    assert fresh["again"]["precision_policy"] == "mixed_float16"


def test_changes_after_initialisation_are_reported_not_raised(fresh):
    changed = fresh["changed"]
    assert len(changed["not_applied"]) == 1 and "cpu_threads=2" in changed["not_applied"][0]
    assert changed["intra_op_threads"] == 1  # still what the first call set
    assert changed["precision_policy"] == "float32"  # the policy can change at any time


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="mixed_precision"):
        configure_devices(mixed_precision="fp16")
    with pytest.raises(ConfigError, match="cpu_threads"):
        configure_devices(cpu_threads=-1)
    with pytest.raises(ConfigError, match="gpu_memory_limit_mb"):
        configure_devices(gpu_memory_limit_mb=0)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the CPU-only path")
def test_a_gpu_assigned_but_not_seen_trains_on_cpu_and_says_so(monkeypatch):
    """The fake multi-node cluster (bench/fake_cluster.py) gives a trial a GPU that is only a
    Ray resource: Ray sets CUDA_VISIBLE_DEVICES, TensorFlow finds no device."""
    previous = keras.config.dtype_policy()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    try:
        report = configure_devices()
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        unassigned = configure_devices()
    finally:
        keras.config.set_dtype_policy(previous)
    assert report["gpus"] == [] and report["precision_policy"] == "float32"
    assert report["not_applied"] == []
    assert any("GPU 0 assigned" in note and "training on CPU" in note
               for note in report["notes"])
    assert not any("assigned" in note for note in unassigned["notes"])
