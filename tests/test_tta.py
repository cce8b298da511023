"""Test-time augmentation: policies, the TensorFlow transforms, and batched prediction."""
from __future__ import annotations

import gc
import weakref
from dataclasses import asdict

import keras
import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.models.classifier import build_model
from orchestrator.tta import predict as tta_predict_module
from orchestrator.tta.policies import (
    POLICIES,
    NamedTransform,
    get_policy,
    policy_for_task,
    policy_mean,
    union_of,
)
from orchestrator.tta.predict import apply_transforms, images_per_pass, tta_predict, tta_predict_each
from tasks import get_task

ALL_TRANSFORMS = union_of(POLICIES.values())


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("baseline_cnn", 3, 32, head_units=16)


def smooth_image(size: int = 64) -> np.ndarray:
    """Low-frequency content: bilinear resampling barely changes it, so a round trip is close."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * xx) * np.cos(np.pi * yy), xx * yy, np.cos(np.pi * (xx - yy))]
    return (127.5 + 100 * np.stack(channels, axis=-1))[None].astype(np.float32)


def one(images, transform: NamedTransform) -> np.ndarray:
    return apply_transforms(images, [transform]).numpy()


# --- policies -----------------------------------------------------------------------------------


def test_policy_sizes_and_distinct_transforms():
    assert len(get_policy("none")) == 1 and get_policy("none")[0].is_identity
    for name, size in (("standard6", 6), ("aggressive17", 17)):
        policy = get_policy(name)
        assert len(policy) == size
        assert len({t.name for t in policy}) == size
        assert len(set(policy)) == size  # distinct parameters too, not only names
        assert policy[0].is_identity


def test_aggressive17_follows_seed_000_order():
    policy = get_policy("aggressive17")
    assert policy[1].kinds == ("hflip",) and policy[2].kinds == ("vflip",)
    assert sorted(t.angle for t in policy[3:9]) == [-15, -10, -5, 5, 10, 15]
    assert all(t.kinds == ("rotate",) for t in policy[3:9])
    assert sorted(t.brightness for t in policy[9:13]) == [-0.2, -0.15, 0.15, 0.2]
    assert all(len(t.kinds) == 3 for t in policy[13:])


def test_kinds_of_a_transform():
    assert NamedTransform("x", vflip=True, angle=-3, brightness=0.1).kinds == (
        "vflip", "rotate", "brightness")
    assert NamedTransform("id").kinds == ()


def test_unknown_policy_names_the_valid_ones():
    with pytest.raises(ConfigError, match="none, standard6, aggressive17"):
        get_policy("heavy")


def test_pneumonia_keeps_no_flip():
    kinds = get_task("pneumonia").tta_kinds
    kept = policy_for_task("aggressive17", kinds)
    assert not any(t.hflip or t.vflip for t in kept)
    assert kept[0].is_identity
    assert [t.kinds for t in kept[1:]] == [("rotate",)] * 6 + [("brightness",)] * 4
    assert [t.name for t in policy_for_task("standard6", kinds)] == [
        "identity", "rot+5", "rot-5", "bright+10", "bright-10"]


def test_every_task_policy_uses_only_its_kinds():
    for name in ("brain", "skin", "leukemia", "pneumonia", "folder"):
        task = get_task(name)
        for policy in POLICIES:
            kept = policy_for_task(policy, task.tta_kinds)
            assert kept[0].is_identity
            assert all(set(t.kinds) <= set(task.tta_kinds) for t in kept)
    assert policy_for_task("aggressive17", ()) == (get_policy("none")[0],)
    with pytest.raises(ConfigError, match="unknown TTA kinds"):
        policy_for_task("standard6", ("mirror",))


def test_union_is_distinct_and_in_first_seen_order():
    union = union_of([get_policy("standard6"), get_policy("aggressive17")])
    assert len(union) == 19  # aggressive17 plus standard6's brightness +-10%
    assert union[:6] == get_policy("standard6")
    with pytest.raises(ConfigError, match="both named"):
        union_of([(NamedTransform("a", hflip=True),), (NamedTransform("a", vflip=True),)])


def test_transforms_survive_a_json_round_trip():
    for t in ALL_TRANSFORMS:
        assert NamedTransform(**asdict(t)) == t  # how the served ensemble stores its policy


def test_invalid_transform_is_refused():
    with pytest.raises(ConfigError):
        NamedTransform("black", brightness=-1.0)
    with pytest.raises(ConfigError):
        NamedTransform("")


# --- transforms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_every_transform_is_deterministic_and_keeps_shape(images, dtype):
    x = images.astype(dtype)
    first = apply_transforms(x, ALL_TRANSFORMS).numpy()
    again = apply_transforms(x, ALL_TRANSFORMS).numpy()
    assert first.shape == (len(ALL_TRANSFORMS) * len(x), *x.shape[1:])
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert first.min() >= 0.0 and first.max() <= 255.0


def test_output_is_transform_major(images):
    t = get_policy("standard6")
    out = apply_transforms(images, t).numpy().reshape(len(t), len(images), 32, 32, 3)
    for i, transform in enumerate(t):
        np.testing.assert_array_equal(out[i], one(images, transform))


def test_identity_is_exact():
    x = np.random.default_rng(1).uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    out = one(x, get_policy("none")[0])
    assert out.tobytes() == x.tobytes()


def test_flips_twice_are_identity(images):
    x = images.astype(np.float32)
    for flip in (NamedTransform("h", hflip=True), NamedTransform("v", vflip=True)):
        once = one(x, flip)
        assert not np.array_equal(once, x)
        np.testing.assert_array_equal(one(once, flip), x)
    np.testing.assert_array_equal(one(x, NamedTransform("h", hflip=True)), x[:, :, ::-1])


@pytest.mark.parametrize("angle", [5.0, 10.0, 15.0])
def test_rotation_round_trip_is_close_in_the_centre(angle):
    x = smooth_image()
    rotated = one(x, NamedTransform("r", angle=angle))
    back = one(rotated, NamedTransform("b", angle=-angle))
    centre = slice(16, 48)
    assert np.abs(rotated - x)[:, centre, centre].max() > 5.0  # it did rotate
    np.testing.assert_allclose(back[:, centre, centre], x[:, centre, centre], atol=1.0)


def test_rotation_is_counter_clockwise_with_reflected_corners():
    x = np.zeros((1, 9, 9, 3), np.float32)
    x[0, 0, 4] = 255.0  # a dot at the top centre
    turned = one(x, NamedTransform("r", angle=90))
    assert np.argwhere(turned[0, ..., 0] > 100).tolist() == [[4, 0]]  # moved to the left
    bright = np.full((1, 32, 32, 3), 200.0, np.float32)
    np.testing.assert_allclose(one(bright, NamedTransform("r", angle=15)), 200.0, atol=1e-3)


def test_brightness_is_multiplicative_and_clipped():
    x = np.array([0.0, 100.0, 220.0, 255.0], np.float32).reshape(1, 1, 4, 1).repeat(3, axis=-1)
    up = one(x, NamedTransform("u", brightness=0.2))[0, 0, :, 0]
    down = one(x, NamedTransform("d", brightness=-0.2))[0, 0, :, 0]
    np.testing.assert_allclose(up, [0.0, 120.0, 255.0, 255.0], rtol=1e-6)
    np.testing.assert_allclose(down, [0.0, 80.0, 176.0, 204.0], rtol=1e-6)


# --- prediction ---------------------------------------------------------------------------------


def by_hand(model, images, transforms) -> np.ndarray:
    """The slow reference: the model on each transformed set separately."""
    return np.stack([model(apply_transforms(images, [t]), training=False).numpy()
                     for t in transforms])


def test_tta_predict_each_equals_one_call_per_transform(model, images):
    transforms = get_policy("aggressive17")
    each = tta_predict_each(model, images, transforms)
    expected = by_hand(model, images, transforms)
    assert each.shape == (17, len(images), 3) and each.dtype == np.float32
    assert each.std(axis=0).max() > 1e-4  # the transforms change the output: not a vacuous test
    np.testing.assert_allclose(each, expected, atol=1e-5)
    np.testing.assert_allclose(tta_predict(model, images, transforms), expected.mean(axis=0),
                               atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 18, 40, 1000])
def test_batch_size_that_does_not_divide_n(model, images, batch_size):
    transforms = get_policy("standard6")
    got = tta_predict_each(model, images, transforms, batch_size=batch_size)
    np.testing.assert_allclose(got, by_hand(model, images, transforms), atol=1e-5)


def test_float_input_gives_the_same_as_uint8(model, images):
    transforms = get_policy("standard6")
    np.testing.assert_allclose(tta_predict_each(model, images.astype(np.float64), transforms),
                               tta_predict_each(model, images, transforms), atol=1e-6)


def test_policy_mean_over_a_union_equals_direct_prediction(model, images):
    kinds = get_task("pneumonia").tta_kinds
    by_policy = {p: policy_for_task(p, kinds) for p in POLICIES}
    union = union_of(by_policy.values())
    per_transform = tta_predict_each(model, images, union)
    for policy in by_policy.values():
        np.testing.assert_allclose(policy_mean(per_transform, union, policy),
                                   tta_predict(model, images, policy), atol=1e-5)
    with pytest.raises(ValueError, match="not scored"):
        policy_mean(per_transform, union, (NamedTransform("hflip", hflip=True),))


def test_one_trace_per_model_and_policy(model, images):
    transforms = get_policy("standard6")
    for batch_size in (4, 8, 32):  # short last passes of several sizes
        tta_predict_each(model, images, transforms, batch_size=batch_size)
    tta_predict_each(model, images[:5], transforms)
    compiled = [p for key, p in tta_predict_module._PREDICTORS[model].items()
                if key[:2] == (transforms, "uint8")]  # one predictor per input dtype
    assert [(p.make.experimental_get_tracing_count(), p.step.experimental_get_tracing_count())
            for p in compiled] == [(1, 1)]


def test_cache_does_not_keep_a_dropped_model_alive(images):
    doomed = build_model("baseline_cnn", 2, 32, head_units=8)
    tta_predict_each(doomed, images, get_policy("standard6"))
    ref = weakref.ref(doomed)
    del doomed
    gc.collect()
    assert ref() is None


def test_images_per_pass_keeps_about_batch_size_inputs():
    assert images_per_pass(32, 17) == 2  # 34 inputs per forward pass
    assert images_per_pass(32, 1) == 32
    assert images_per_pass(1, 17) == 1
    with pytest.raises(ConfigError):
        images_per_pass(0, 6)


def test_empty_input_and_bad_arguments(model, images):
    assert tta_predict_each(model, images[:0], get_policy("standard6")).shape == (6, 0, 3)
    with pytest.raises(ValueError, match="no TTA transforms"):
        tta_predict_each(model, images, ())
    with pytest.raises(ValueError, match="N, H, W, C"):
        tta_predict_each(model, images[0], get_policy("none"))


def test_a_multihead_model_is_scored_as_one_matrix_in_the_tasks_head_order(tmp_path):
    from orchestrator.models.heads import TargetScale, as_matrix
    from orchestrator.tta.predict import output_width
    from tasks.multihead import MULTIHEAD

    model = build_model("baseline_cnn", 0, 32, heads=MULTIHEAD.heads,
                        target_scales={"size": TargetScale(40.0, 10.0)})
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # the order survives saving
    assert output_width(loaded) == 8
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    transforms = policy_for_task("standard6", MULTIHEAD.tta_kinds)
    each = tta_predict_each(loaded, images, transforms, batch_size=8)
    assert each.shape == (len(transforms), 5, 8)
    for t, transform in enumerate(transforms):
        one = apply_transforms(images, (transform,)).numpy()
        expected = as_matrix(loaded.predict(one, verbose=0), MULTIHEAD)
        np.testing.assert_allclose(each[t], expected, rtol=1e-4, atol=1e-4)
    assert tta_predict_each(loaded, images[:0], transforms).shape == (len(transforms), 0, 8)
