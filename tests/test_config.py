"""The trial config refuses bad fields by name and takes what Tune and JSON hand it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.train.config import TrialConfig
from orchestrator.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_round_trips_through_json():
    cfg = TrialConfig(task="skin", resolution=96, mixup_alpha=0.2)
    again = TrialConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_coerces_numpy_and_int_values_like_a_tune_sample():
    cfg = TrialConfig.from_dict({"resolution": np.int64(64), "lr_multiplier": 1,
                                 "label_smoothing": np.float32(0.1), "keep_duplicates": "true"})
    assert cfg.resolution == 64 and isinstance(cfg.lr_multiplier, float)
    assert cfg.keep_duplicates is True


@pytest.mark.parametrize("values,needle", [
    ({"resoluton": 64}, "unknown trial config field"),
    ({"resolution": 8}, "resolution"),
    ({"loss": "hinge"}, "loss: 'hinge'"),
    ({"augment": "extreme"}, "augment"),
    ({"epochs": 2.5}, "epochs: 2.5"),
    ({"label_smoothing": 0.9}, "label_smoothing"),
])
def test_bad_values_name_the_field(values, needle):
    with pytest.raises(ConfigError, match=needle):
        TrialConfig.from_dict(values)


@pytest.mark.parametrize("field,value,valid", [
    ("backbone", "resnet5O", ["baseline_cnn", "resnet50", "mobilenetv3small"]),
    ("schedule", "three_phases", ["two_phase", "three_phase", "full"]),
    ("augment", "extreme", ["none", "light", "heavy"]),
    ("task", "brian", ["brain", "skin", "pneumonia"]),
    ("task", "brain/5class", ["3class", "4class"]),
])
def test_every_name_is_checked_when_the_config_is_built_with_the_valid_names(field, value,
                                                                              valid):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{field: value})
    message = str(err.value)
    assert message.startswith(f"trial config field {field}:") and repr(value.split("/")[-1]) \
        in message
    assert all(name in message for name in valid), message


def test_names_are_checked_without_loading_tensorflow_or_ray():
    """The driver checks names before Ray starts; that must not cost a TensorFlow import."""
    code = ("import sys\n"
            "from orchestrator.train.config import TrialConfig\n"
            "try:\n"
            "    TrialConfig(backbone='nope')\n"
            "except Exception as err:\n"
            "    print(type(err).__name__)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'ray', 'mlflow')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.stdout.split() == ["ConfigError", "[]"], proc.stderr[-2000:]
