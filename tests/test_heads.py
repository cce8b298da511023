"""Several heads as one matrix: layout, round trips, target scales, loss-weight strings."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.models.heads import (as_matrix, column_slices, head_label, parse_head_weights,
                                prediction_width, split_predictions, split_targets,
                                target_scales)
from tasks.base import Head, Task
from tasks.brain import THREE_CLASS
from tasks.multihead import MULTIHEAD


def test_layout_puts_each_heads_columns_side_by_side_in_task_order():
    assert prediction_width(MULTIHEAD) == 4 + 3 + 1
    assert column_slices(MULTIHEAD) == {"shape": slice(0, 4), "texture": slice(4, 7),
                                        "size": slice(7, 8)}
    assert prediction_width(THREE_CLASS) == 3


def test_dict_outputs_round_trip_through_the_matrix():
    rng = np.random.default_rng(0)
    outputs = {"size": rng.normal(40, 5, (6, 1)), "texture": rng.dirichlet(np.ones(3), 6),
               "shape": rng.dirichlet(np.ones(4), 6)}  # any key order: the task's order wins
    matrix = as_matrix(outputs, MULTIHEAD)
    assert matrix.shape == (6, 8)
    back = split_predictions(matrix, MULTIHEAD)
    np.testing.assert_allclose(back["shape"], outputs["shape"])
    np.testing.assert_allclose(back["texture"], outputs["texture"])
    np.testing.assert_allclose(back["size"], outputs["size"][:, 0])
    single = np.eye(3)[[0, 2]]
    assert as_matrix(single, THREE_CLASS) is not None and as_matrix(single, THREE_CLASS).shape \
        == (2, 3)
    with pytest.raises(ValueError, match="lack the heads"):
        as_matrix({"shape": outputs["shape"]}, MULTIHEAD)
    with pytest.raises(ValueError, match="8 columns"):
        split_predictions(matrix[:, :7], MULTIHEAD)


def test_targets_split_into_class_indices_and_values():
    y = np.array([[0, 2, 31.5], [3, 1, 48.25]])
    parts = split_targets(y, MULTIHEAD)
    assert parts["shape"].dtype == np.int64 and parts["shape"].tolist() == [0, 3]
    assert parts["size"].tolist() == [31.5, 48.25]
    with pytest.raises(ValueError, match="3 heads"):
        split_targets(y[:, :2], MULTIHEAD)


def test_target_scales_come_from_the_given_split_and_never_divide_by_zero():
    y = np.array([[0, 0, 20.0], [1, 1, 40.0], [2, 2, 60.0]])
    scale = target_scales(y, MULTIHEAD)["size"]
    assert scale.mean == pytest.approx(40.0) and scale.std == pytest.approx(np.std([20, 40, 60]))
    assert set(target_scales(y, MULTIHEAD)) == {"size"}
    flat = np.array([[0, 0, 5.0], [1, 1, 5.0]])
    assert target_scales(flat, MULTIHEAD)["size"].std == 1.0


def test_head_weights_string_is_parsed_and_checked_by_name():
    assert parse_head_weights("", MULTIHEAD) == {"shape": 1.0, "texture": 1.0, "size": 1.0}
    assert parse_head_weights("size=0.5, shape=2", MULTIHEAD) == {"shape": 2.0, "texture": 1.0,
                                                                  "size": 0.5}
    assert parse_head_weights("regression=0.5,classification=2,shape=3", MULTIHEAD) == {
        "shape": 3.0, "texture": 2.0, "size": 0.5}
    from tasks import get_task
    assert parse_head_weights("volume=2", get_task("multihead/csv")) == {}  # names come later
    with pytest.raises(ConfigError, match="HEAD=WEIGHT"):
        parse_head_weights("tumour volume=2", get_task("multihead/csv"))
    for bad, needle in [("colour=1", "HEAD one of shape, texture, size, classification"),
                        ("size", "HEAD=WEIGHT"), ("size=big", "'big'"),
                        ("size=0", "must be > 0")]:
        with pytest.raises(ConfigError, match=needle):
            parse_head_weights(bad, MULTIHEAD)
    with pytest.raises(ConfigError, match="single head"):
        parse_head_weights("x=1", THREE_CLASS)


def test_head_records_refuse_what_cannot_be_a_model_output():
    with pytest.raises(ConfigError, match="plain identifier"):
        Head("tumour size", "regression")
    with pytest.raises(ConfigError, match="kind"):
        Head("x", "ordinal")
    with pytest.raises(ConfigError, match="loss 'huber'"):
        Head("x", "classification", classes=("a", "b"), loss="huber")
    with pytest.raises(ConfigError, match=">= 2 classes"):
        Head("x", "classification", classes=("a",))
    with pytest.raises(ConfigError, match="no classes"):
        Head("x", "regression", classes=("a", "b"))
    assert Head("x", "regression").loss == "huber"
    assert head_label(MULTIHEAD.head("size")) == "size (mm)"
    assert head_label(MULTIHEAD.head("shape")) == "shape (4 classes)"
    with pytest.raises(ConfigError, match="no head 'colour'"):
        MULTIHEAD.head("colour")


def test_a_multihead_task_must_stratify_on_its_first_classification_head():
    from dataclasses import replace
    with pytest.raises(ConfigError, match="first classification head"):
        replace(MULTIHEAD, classes=("smooth", "stripes", "dots"))
    with pytest.raises(ConfigError, match="mean_skill"):
        replace(MULTIHEAD, metric="accuracy")
    with pytest.raises(ConfigError, match="repeat"):
        replace(MULTIHEAD, heads=MULTIHEAD.heads + (Head("size", "regression"),))
    found = Task.with_heads(MULTIHEAD, (Head("volume", "regression"),
                                        Head("grade", "classification", classes=("1", "2"))))
    assert found.classes == ("1", "2") and found.is_multihead
    with pytest.raises(ConfigError, match="at least one classification head"):
        Task.with_heads(MULTIHEAD, (Head("volume", "regression"),))
