"""The trial config refuses bad fields by name and takes what Tune and JSON hand it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.config import TrialConfig
from orchestrator.errors import ConfigError


def test_round_trips_through_json():
    cfg = TrialConfig(task="skin", resolution=96, mixup_alpha=0.2)
    again = TrialConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_coerces_numpy_and_int_values_like_a_tune_sample():
    cfg = TrialConfig.from_dict({"resolution": np.int64(64), "lr_multiplier": 1,
                                 "label_smoothing": np.float32(0.1), "drop_duplicates": "true"})
    assert cfg.resolution == 64 and isinstance(cfg.lr_multiplier, float)
    assert cfg.drop_duplicates is True


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
