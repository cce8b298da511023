"""Backbones, the classifier, ImageNet weight resolution. Never downloads: every test runs with
MEDSWEEP_OFFLINE=1 and a private, empty KERAS_HOME."""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras.src.applications import densenet, efficientnet, mobilenet_v3, resnet

from orchestrator.errors import ConfigError, WeightsUnavailable
from orchestrator.models.classifier import (
    BACKBONES,
    KERAS_BACKBONES,
    BackbonePreprocess,
    build_model,
    get_backbone,
    keras_backbone,
    keras_cache_dir,
    model_backbone,
    resolve_weights,
)

BATCH = 2


@pytest.fixture(autouse=True)
def _never_download(private_keras_home):
    return private_keras_home


def _pixels(resolution: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (BATCH, resolution, resolution, 3)).astype("float32")


def _save_legacy_h5(base: keras.Model, path) -> None:
    """Keras's own ImageNet files are legacy HDF5; `Model.save(".h5")` writes that format."""
    base.save(str(path))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="resnet50.*densenet121"):
        get_backbone("resnet5O")
    with pytest.raises(ConfigError, match="resnet50.*densenet121"):
        keras_backbone("resnet5O")


def test_every_registered_backbone_has_its_keras_side_under_the_same_name():
    assert list(KERAS_BACKBONES) == list(BACKBONES)


def test_weights_metadata_matches_installed_keras():
    """File names, URLs and hashes are copied from Keras; catch drift on a Keras upgrade."""
    expected = {
        "resnet50": (
            resnet.BASE_WEIGHTS_PATH + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            resnet.WEIGHTS_HASHES["resnet50"][1],
        ),
        "densenet121": (densenet.DENSENET121_WEIGHT_PATH_NO_TOP, None),
        "efficientnetb0": (
            efficientnet.BASE_WEIGHTS_PATH + "efficientnetb0_notop.h5",
            efficientnet.WEIGHTS_HASHES["b0"][1],
        ),
        "mobilenetv3small": (
            mobilenet_v3.BASE_WEIGHT_PATH
            + "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"][1],
        ),
    }
    for name, (url, md5) in expected.items():
        bb = BACKBONES[name]
        assert bb.weights_url == url
        assert bb.weights_file == url.rsplit("/", 1)[1]
        if md5 is not None:
            assert bb.weights_hash == md5
    assert BACKBONES["densenet121"].weights_hash == "30ee3e1110167f948a6b9946edeeb738"
    assert not BACKBONES["baseline_cnn"].pretrainable
    assert all(BACKBONES[name].pretrainable for name in expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_and_trains_one_step(name):
    bb = BACKBONES[name]
    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=3, resolution=bb.min_resolution, weights="none")
    assert model.get_layer("backbone").name == "backbone"
    assert isinstance(model.get_layer("preprocess"), BackbonePreprocess)
    assert model_backbone(model) is bb
    # Eager: tracing a train step of these bases costs 10-40 s each on two cores.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(_pixels(bb.min_resolution), np.array([0, 2]))
    assert np.isfinite(loss)
    probs = keras.ops.convert_to_numpy(model(_pixels(bb.min_resolution), training=False))
    assert probs.shape == (BATCH, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_binary_is_two_way_softmax_and_bad_arguments_are_refused():
    model = build_model("baseline_cnn", num_classes=2, resolution=32)
    assert model.output.shape == (None, 2)
    assert model.get_layer("probabilities").get_config()["activation"] == "softmax"
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("baseline_cnn", num_classes=1, resolution=32)
    with pytest.raises(ConfigError, match="resolution >= 32"):
        build_model("mobilenetv3small", num_classes=2, resolution=31)
    with pytest.raises(ConfigError, match="weights"):
        build_model("resnet50", num_classes=2, resolution=32, weights="imagenet21k")


@pytest.mark.parametrize(
    "name, reference",
    [
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("densenet121", keras.applications.densenet.preprocess_input),
        ("efficientnetb0", lambda x: x),
        ("mobilenetv3small", lambda x: x),
        ("baseline_cnn", lambda x: x / 255.0),
    ],
)
def test_preprocessing_inside_the_model_is_the_backbones_own(name, reference):
    x = _pixels(32)
    got = keras.ops.convert_to_numpy(BackbonePreprocess(name)(x))
    np.testing.assert_allclose(got, reference(x.copy()), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["baseline_cnn", "mobilenetv3small"])
def test_saved_model_loads_back_with_identical_predictions(name, tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model(name, num_classes=4, resolution=32, head_units=16)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert model_backbone(loaded) is BACKBONES[name]
    x = _pixels(32, seed=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(loaded(x, training=False)),
    )


def test_output_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("baseline_cnn", num_classes=3, resolution=32)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("backbone").layers[1].compute_dtype == "float16"
    assert model.get_layer("preprocess").compute_dtype == "float32"
    out = model(_pixels(32), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


# --- weights -------------------------------------------------------------------------------------


def test_baseline_has_no_imagenet_weights():
    assert resolve_weights("baseline_cnn", "none") is None
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model("baseline_cnn", num_classes=2, resolution=32, weights="imagenet")


def test_empty_weights_dir_names_file_dir_and_url(tmp_path):
    bb = BACKBONES["resnet50"]
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(WeightsUnavailable) as err:
        build_model("resnet50", num_classes=2, resolution=32, weights="imagenet", weights_dir=empty)
    message = str(err.value)
    for part in (bb.weights_file, str(empty), bb.weights_url, "--weights-dir", "get_file"):
        assert part in message


def test_weights_dir_from_environment_is_read_at_call_time(tmp_path, monkeypatch):
    bb = BACKBONES["densenet121"]
    monkeypatch.setenv("MEDSWEEP_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=r"\$MEDSWEEP_WEIGHTS_DIR") as err:
        resolve_weights(bb, "imagenet")
    assert bb.weights_file in str(err.value)
    (tmp_path / bb.weights_file).write_bytes(b"placeholder")
    assert resolve_weights(bb, "imagenet") == str(tmp_path / bb.weights_file)


def test_offline_without_cached_file_says_where_to_put_it(_never_download):
    bb = BACKBONES["efficientnetb0"]
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(bb, "imagenet")
    message = str(err.value)
    cache = os.path.join(str(_never_download), "models")
    for part in (bb.weights_file, bb.weights_url, cache, "--weights-dir", "MEDSWEEP_WEIGHTS_DIR"):
        assert part in message
    assert "MEDSWEEP_OFFLINE=1" in message


def test_file_in_keras_cache_is_used_without_download(_never_download):
    bb = BACKBONES["mobilenetv3small"]
    assert keras_cache_dir() == str(_never_download)
    cached = _never_download / "models" / bb.weights_file
    cached.parent.mkdir()
    cached.write_bytes(b"placeholder")
    assert resolve_weights(bb, "imagenet") == str(cached)


def test_file_in_weights_dir_is_the_one_loaded(tmp_path):
    bb = BACKBONES["mobilenetv3small"]
    keras.utils.set_random_seed(7)
    donor = keras_backbone(bb).constructor((32, 32, 3), None)
    _save_legacy_h5(donor, tmp_path / bb.weights_file)
    expected = keras.ops.convert_to_numpy(donor.get_layer("conv").kernel)

    keras.utils.set_random_seed(8)
    model = build_model(bb.name, 2, 32, weights="imagenet", weights_dir=tmp_path)
    loaded = keras.ops.convert_to_numpy(model.get_layer("backbone").get_layer("conv").kernel)
    fresh = build_model(bb.name, 2, 32, weights="none")
    other = keras.ops.convert_to_numpy(fresh.get_layer("backbone").get_layer("conv").kernel)
    np.testing.assert_array_equal(loaded, expected)
    assert not np.allclose(other, expected)


def test_unloadable_weights_file_is_reported(tmp_path):
    bb = BACKBONES["mobilenetv3small"]
    other_architecture = keras_backbone("baseline_cnn").constructor((32, 32, 3), None)
    _save_legacy_h5(other_architecture, tmp_path / bb.weights_file)
    with pytest.raises(WeightsUnavailable, match="could not load weights"):
        build_model(bb.name, 2, 32, weights="imagenet", weights_dir=tmp_path)


def test_efficientnet_loaded_from_path_normalises_like_keras_imagenet(tmp_path):
    """Keras adds Rescaling(1/sqrt(stddev)) only for weights="imagenet"; a path must match it."""
    bb = BACKBONES["efficientnetb0"]
    _save_legacy_h5(keras_backbone(bb).constructor((32, 32, 3), None), tmp_path / bb.weights_file)
    base = keras_backbone(bb).constructor((32, 32, 3), str(tmp_path / bb.weights_file))
    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    stddev = np.array(efficientnet.IMAGENET_STDDEV_RGB)
    probe = keras.Model(base.input, norm.output)
    x = _pixels(32)
    # The saved variance is 1 (random init); Keras's imagenet model would compute x/255/sqrt(std).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(probe(x)), x / 255.0 / np.sqrt(stddev), rtol=1e-5
    )


# --- several heads and the frequency stream ------------------------------------------------------

def test_multihead_model_has_one_named_output_per_head_in_the_heads_units(tmp_path):
    from orchestrator.models.heads import TargetScale, as_matrix
    from tasks.multihead import MULTIHEAD

    model = build_model("baseline_cnn", 0, 32, heads=MULTIHEAD.heads, frequency_stream=True,
                        target_scales={"size": TargetScale(mean=40.0, std=10.0)})
    x = _pixels(32)
    out = model.predict(x, verbose=0)
    assert set(out) == {"shape", "texture", "size"}
    assert out["shape"].shape == (len(x), 4) and out["texture"].shape == (len(x), 3)
    np.testing.assert_allclose(out["shape"].sum(axis=1), 1.0, rtol=1e-5)
    # the regression output is the standardised value rescaled: 40 + 10 * z
    z = keras.Model(model.input, model.get_layer("size_standardised").output).predict(x, verbose=0)
    np.testing.assert_allclose(out["size"], 40.0 + 10.0 * z, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(as_matrix(again.predict(x, verbose=0), MULTIHEAD),
                               as_matrix(out, MULTIHEAD), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="no target scale"):
        build_model("baseline_cnn", 0, 32, heads=MULTIHEAD.heads)
    from orchestrator.train.phases import set_trainable  # the schedules work unchanged
    trainable, total = set_trainable(model, 0.5)
    assert 0 < trainable <= total
    assert all(model.get_layer(n).trainable for n in ("shape_logits", "size_standardised"))


def test_frequency_magnitude_ignores_where_the_object_sits_and_its_brightness():
    from orchestrator.models.frequency import FREQUENCY_CLIP, FrequencyMagnitude

    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 4:12, 6:10] = 200.0
    moved = np.roll(image, shift=(13, 9), axis=(1, 2))  # circular shift: same |FFT|
    layer = FrequencyMagnitude()
    a, b = layer(image).numpy(), layer(moved).numpy()
    assert a.shape == (1, 32, 32, 1)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a).max() <= FREQUENCY_CLIP + 1e-6
    assert abs(a.mean()) < 0.2  # standardised per image
    # the spectrum's centre is the lowest frequency: the brightest point of an object's spectrum
    assert np.unravel_index(np.argmax(a[0, :, :, 0]), (32, 32)) == (16, 16)
    stripes = np.zeros_like(image)
    stripes[0, :, ::4] = 255.0  # a period-4 texture has energy away from the centre
    assert not np.allclose(layer(stripes).numpy(), a, atol=0.5)


def test_the_frequency_stream_trains_in_every_phase_and_the_single_head_model_takes_it():
    from orchestrator.train.phases import set_trainable

    model = build_model("baseline_cnn", 3, 32, frequency_stream=True)
    assert model.output_shape == (None, 3)
    set_trainable(model, 0.0)
    assert model.get_layer("frequency_conv1").trainable
    assert model.get_layer("fused_features") is not None
