"""Unfreezing schedules: shapes, epoch plans, what set_trainable really freezes, optimizers."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.models.classifier import build_model
from orchestrator.train.schedules import (
    SCHEDULES,
    Phase,
    Schedule,
    get_schedule,
    plan_epochs,
    scale_schedule,
    unfrozen_count,
)
from orchestrator.train.phases import current_learning_rate, make_optimizer, set_trainable

HEAD = ("head_dense", "logits")


@pytest.fixture(scope="module")
def mobilenet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("mobilenetv3small", num_classes=3, resolution=32, weights="none")


def _backbone_layers(model: keras.Model) -> list:
    base = model.get_layer("backbone")
    return [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]


def _is_bn(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


# --- data ----------------------------------------------------------------------------------------


def test_required_schedules_exist_and_shares_sum_to_one():
    assert {"two_phase", "three_phase", "three_phase_continued", "full"} <= set(SCHEDULES)
    for schedule in SCHEDULES.values():
        assert math.isclose(sum(p.epochs for p in schedule.phases), 1.0)
    with pytest.raises(ConfigError, match="sum to"):
        Schedule("bad", (Phase(0.5, 0.0, 1e-3), Phase(0.4, 1.0, 1e-4)), "")
    with pytest.raises(ConfigError, match="decay"):
        Phase(1.0, 1.0, 1e-4, "linear")


def test_seed_schedules_keep_their_shape():
    three = get_schedule("three_phase").phases
    assert [(p.trainable_fraction, p.learning_rate) for p in three] == [
        (0.0, 1e-3), (0.2, 1e-4), (1.0, 1e-4)
    ]
    assert get_schedule("three_phase_continued").phases[-1] == Phase(0.25, 1.0, 1e-5)
    assert get_schedule("full").phases == (Phase(1.0, 1.0, 1e-4, "cosine"),)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ConfigError, match="two_phase.*full"):
        get_schedule("one_phase")


def test_scale_schedule_rescales_learning_rates_only():
    base = get_schedule("three_phase_continued")
    scaled = scale_schedule(base, 3.0)
    for before, after in zip(base.phases, scaled.phases):
        assert math.isclose(after.learning_rate, 3.0 * before.learning_rate)
        assert (after.epochs, after.trainable_fraction, after.decay) == (
            before.epochs, before.trainable_fraction, before.decay
        )
    with pytest.raises(ConfigError):
        scale_schedule(base, 0.0)


# --- epoch plans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_plan_covers_every_epoch_contiguously(name):
    schedule = SCHEDULES[name]
    n = len(schedule.phases)
    for total in range(1, 31):
        if total < n:
            with pytest.warns(UserWarning, match="dropping"):
                plan = plan_epochs(schedule, total)
            assert [p.phase for p in plan] == list(schedule.phases[:total])
        else:
            plan = plan_epochs(schedule, total)
            assert [p.phase for p in plan] == list(schedule.phases)
        assert plan[0].start_epoch == 0 and plan[-1].end_epoch == total
        assert all(a.end_epoch == b.start_epoch for a, b in zip(plan, plan[1:]))
        assert all(p.epochs >= 1 for p in plan)


def test_plan_rounds_by_largest_remainder_and_keeps_small_phases():
    assert [p.epochs for p in plan_epochs(get_schedule("three_phase"), 30)] == [10, 10, 10]
    assert [p.epochs for p in plan_epochs(get_schedule("three_phase"), 4)] == [2, 1, 1]
    skewed = Schedule("skewed", (Phase(0.02, 0.0, 1e-3), Phase(0.98, 1.0, 1e-4)), "")
    assert [p.epochs for p in plan_epochs(skewed, 10)] == [1, 9]
    uneven = Schedule("uneven", (Phase(0.3, 0.0, 1e-3), Phase(0.7, 1.0, 1e-4)), "")
    assert [p.epochs for p in plan_epochs(uneven, 7)] == [2, 5]  # 2.1 / 4.9
    with pytest.raises(ConfigError):
        plan_epochs(skewed, 0)


# --- set_trainable -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, index", [(n, i) for n, s in SCHEDULES.items() for i in range(len(s.phases))]
)
def test_set_trainable_unfreezes_what_the_phase_declares(mobilenet, name, index):
    fraction = SCHEDULES[name].phases[index].trainable_fraction
    layers = _backbone_layers(mobilenet)
    n = len(layers)
    top = layers[n - math.ceil(fraction * n):] if fraction else []
    expected = [l.name for l in top if not _is_bn(l)]

    trainable, total = set_trainable(mobilenet, fraction)

    assert [l.name for l in layers if l.trainable] == expected
    assert (trainable, total) == (len(expected), n)
    assert not any(l.trainable for l in layers if _is_bn(l))
    assert all(mobilenet.get_layer(h).trainable for h in HEAD)
    assert mobilenet.get_layer("backbone").trainable


def test_unfrozen_count_is_a_ceiling_without_float_noise():
    assert unfrozen_count(0.07, 100) == 7  # 0.07 * 100 == 7.000000000000001
    assert unfrozen_count(0.43, 174) == 75  # ResNet50 without its InputLayer: layers 100..174
    assert unfrozen_count(0.2, 156) == 32
    assert (unfrozen_count(0.0, 156), unfrozen_count(1.0, 156)) == (0, 156)


def test_train_batchnorm_unfreezes_bn_in_the_top_span(mobilenet):
    # A wholesale freeze done elsewhere (the usual Keras idiom) must not survive set_trainable.
    mobilenet.get_layer("backbone").trainable = False
    mobilenet.get_layer("head_dense").trainable = False
    set_trainable(mobilenet, 1.0, train_batchnorm=True)
    assert all(l.trainable for l in _backbone_layers(mobilenet))
    assert mobilenet.get_layer("backbone").trainable and mobilenet.get_layer("head_dense").trainable
    set_trainable(mobilenet, 0.0, train_batchnorm=True)
    assert not any(l.trainable for l in _backbone_layers(mobilenet))


def test_two_phase_reaches_resnet50_layers_100_and_up():
    model = build_model("resnet50", num_classes=2, resolution=32, head_units=8)
    fine_tune = get_schedule("two_phase").phases[1]
    set_trainable(model, fine_tune.trainable_fraction, train_batchnorm=True)
    layers = model.get_layer("backbone").layers  # index 0 is the InputLayer
    assert [l.trainable for l in layers[1:]] == [i >= 100 for i in range(1, len(layers))]


def test_baseline_cnn_stays_fully_trainable():
    model = build_model("baseline_cnn", num_classes=2, resolution=32, head_units=8)
    for fraction in (0.0, 0.2, 1.0):
        trainable, total = set_trainable(model, fraction)
        assert trainable == total == len(_backbone_layers(model))
        assert all(l.trainable for l in model.layers)


@pytest.mark.slow
def test_frozen_weights_do_not_move_and_trainable_ones_do(mobilenet):
    set_trainable(mobilenet, 0.2)
    mobilenet.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,  # tracing this step costs ~10 s on two cores
    )
    layers = _backbone_layers(mobilenet)
    frozen = [w for l in layers if not l.trainable for w in l.weights]  # incl. BN moving stats
    unfrozen = [w for l in layers if l.trainable for w in l.weights]
    head = mobilenet.get_layer("head_dense").weights + mobilenet.get_layer("logits").weights
    assert frozen and unfrozen
    before = {id(w): keras.ops.convert_to_numpy(w).copy() for w in frozen + unfrozen + head}

    def moved(w) -> bool:
        return not np.array_equal(keras.ops.convert_to_numpy(w), before[id(w)])

    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    mobilenet.train_on_batch(x, np.array([0, 1, 2, 0]))

    assert [w.path for w in frozen if moved(w)] == []
    assert all(moved(w) for w in head)
    # What the optimizer updates is exactly the unfrozen span plus the head; at 32 px a few
    # squeeze-excite kernels get an exactly zero gradient, so not every one of them moves.
    updated = {id(w) for w in mobilenet.trainable_weights}
    assert {id(w) for w in unfrozen} <= updated and not {id(w) for w in frozen} & updated
    assert sum(moved(w) for w in unfrozen) >= len(unfrozen) // 2


def test_fraction_out_of_range_is_refused(mobilenet):
    with pytest.raises(ConfigError):
        set_trainable(mobilenet, 1.5)


# --- optimizers ----------------------------------------------------------------------------------


def test_constant_phase_keeps_its_learning_rate():
    optimizer = make_optimizer(Phase(1.0, 0.0, 3e-4), steps_per_epoch=5, phase_epochs=2)
    assert isinstance(optimizer, keras.optimizers.Adam)
    optimizer.iterations.assign(7)
    assert math.isclose(current_learning_rate(optimizer), 3e-4, rel_tol=1e-6)


def test_cosine_phase_decays_to_a_tenth_over_the_phase():
    optimizer = make_optimizer(Phase(1.0, 1.0, 1e-3, "cosine"), steps_per_epoch=5, phase_epochs=4)
    assert math.isclose(current_learning_rate(optimizer), 1e-3, rel_tol=1e-6)
    optimizer.iterations.assign(10)
    assert math.isclose(current_learning_rate(optimizer), 0.55e-3, rel_tol=1e-5)
    optimizer.iterations.assign(20)
    assert math.isclose(current_learning_rate(optimizer), 1e-4, rel_tol=1e-5)
    wrapped = keras.optimizers.LossScaleOptimizer(optimizer)  # what compile does under fp16
    assert math.isclose(current_learning_rate(wrapped), 1e-4, rel_tol=1e-5)
    with pytest.raises(ConfigError):
        make_optimizer(Phase(1.0, 1.0, 1e-3), steps_per_epoch=0, phase_epochs=1)
