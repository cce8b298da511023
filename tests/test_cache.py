"""The image cache: every input kind comes out (R, R, 3) uint8 RGB; a hit decodes nothing."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from orchestrator.data.cache import (cache_key, cache_root, decode_image, load_or_build,
                                     preprocess_image)
from orchestrator.data.splits import content_fingerprint
from tasks.base import Preprocessing

RGB = Preprocessing()
GRAY = Preprocessing(grayscale=True)
CLAHE = Preprocessing(grayscale=True, clahe=True, clahe_clip=2.0, clahe_tiles=8)


def write(path: Path, img: np.ndarray) -> str:
    """cv2.imwrite does not take non-ASCII paths everywhere; imencode + tofile does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    buf.tofile(str(path))
    return str(path)


def smooth_noise(shape, seed, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.uint8), (0, 0), 2)
    return img.astype(dtype)


@pytest.fixture
def images(tmp_path):
    """A small data set of every kind a reader may hand over."""
    blue = np.zeros((40, 60, 3), np.uint8)
    blue[:, :, 0] = 255  # BGR: pure blue
    bgra = np.dstack([blue, np.full((40, 60), 128, np.uint8)])
    twelve_bit = (smooth_noise((50, 50), 3).astype(np.uint16) * 16)  # 0..4080 in 16 bits
    files = {
        "gray.png": smooth_noise((80, 70), 1),
        "colour.jpg": smooth_noise((300, 280, 3), 2),
        "blue.png": blue,
        "bgra.png": bgra,
        "sixteen.png": twelve_bit,
        "sixteen_rgb.tif": smooth_noise((30, 30, 3), 4, np.uint16) * 257,
    }
    return {name: write(tmp_path / "data" / "ümlaut" / name, img) for name, img in files.items()}


def test_every_input_kind_comes_out_square_uint8_rgb(images):
    for name, path in images.items():
        img = decode_image(path)
        assert img is not None and img.dtype == np.uint8, name
        assert img.ndim == 2 or img.shape[2] == 3, name
        out = preprocess_image(img, RGB, 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
    assert decode_image(images["gray.png"]).ndim == 2
    gray = preprocess_image(decode_image(images["gray.png"]), RGB, 32)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert preprocess_image(decode_image(images["blue.png"]), RGB, 8)[0, 0].tolist() == [0, 0, 255]
    assert preprocess_image(decode_image(images["bgra.png"]), RGB, 8)[0, 0].tolist() == [0, 0, 255]


def test_sixteen_bit_is_stretched_not_left_black(images):
    img = decode_image(images["sixteen.png"])
    assert img.dtype == np.uint8 and img.ndim == 2
    assert img.min() == 0 and img.max() == 255


def test_grayscale_spec_reduces_colour_to_gray(images):
    out = preprocess_image(decode_image(images["colour.jpg"]), GRAY, 64)
    assert (out[..., 0] == out[..., 2]).all()
    expected = cv2.resize(cv2.cvtColor(decode_image(images["colour.jpg"]), cv2.COLOR_BGR2GRAY),
                          (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[..., 0], expected)


def test_upscaling_uses_linear_and_downscaling_area():
    img = smooth_noise((20, 20, 3), 5)
    up = preprocess_image(img, RGB, 50)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(up, cv2.resize(rgb, (50, 50), interpolation=cv2.INTER_LINEAR))
    down = preprocess_image(img, RGB, 7)
    np.testing.assert_array_equal(down, cv2.resize(rgb, (7, 7), interpolation=cv2.INTER_AREA))


def test_clahe_matches_cv2_and_raises_contrast():
    rng = np.random.default_rng(0)
    low = (110 + rng.integers(0, 20, (128, 128))).astype(np.uint8)  # low contrast
    out = preprocess_image(low, CLAHE, 128)
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(low)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out.std() > 2 * preprocess_image(low, GRAY, 128).std()


def test_colour_clahe_equalises_lightness_only():
    rng = np.random.default_rng(1)
    img = np.dstack([(100 + rng.integers(0, 15, (64, 64))).astype(np.uint8)] * 3)
    img[..., 2] += 40  # reddish, low contrast
    spec = Preprocessing(clahe=True, clahe_clip=3.0, clahe_tiles=4)
    lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(lab[..., 0].copy())
    expected = cv2.cvtColor(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(preprocess_image(img, spec, 64), expected)


def test_missing_and_corrupt_files_decode_to_none(tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("corrupt.jpg", "empty.png", "missing.png"):
        assert decode_image(tmp_path / name) is None
    assert decode_image(tmp_path) is None  # a folder, not a file


def test_second_call_decodes_nothing(images, tmp_path):
    paths = sorted(images.values())
    fp = content_fingerprint(paths)
    lines = []
    first = load_or_build(paths, RGB, 32, fp, root=tmp_path / "cache", log=lines.append)
    assert not first.hit and first.ok.all() and first.failed == []
    assert first.images.shape == (len(paths), 32, 32, 3) and first.images.dtype == np.uint8
    assert not first.images.flags.writeable
    assert lines[-1].startswith(f"decoded {len(paths)} images (32 px, rgb) in ")
    data = Path(paths[0]).parent
    data.rename(data.with_name("gone"))  # nothing left to decode: a hit must not try
    second = load_or_build(paths, RGB, 32, fp, root=tmp_path / "cache", log=lines.append)
    assert second.hit and second.ok.all() and second.directory == first.directory
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert lines[-1].startswith("cache hit:")
    assert sorted(p.name for p in second.directory.iterdir()) == [
        "failed.json", "images.npy", "meta.json", "ok.npy", "paths.txt"]


def test_bad_files_are_flagged_not_raised(images, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"garbage")
    paths = [images["gray.png"], str(tmp_path / "corrupt.jpg"), str(tmp_path / "missing.png")]
    cached = load_or_build(paths, RGB, 16, content_fingerprint(paths), root=tmp_path / "c",
                           log=lambda _: None)
    assert cached.ok.tolist() == [True, False, False]
    assert cached.failed == paths[1:]
    assert not cached.images[1:].any()


def test_key_depends_on_content_resolution_and_preprocessing(images, tmp_path):
    paths = sorted(images.values())
    fp = content_fingerprint(paths)
    assert cache_key(fp, 224, RGB) == cache_key(fp, 224, Preprocessing())
    keys = {cache_key(fp, 224, RGB), cache_key(fp, 128, RGB), cache_key(fp, 224, GRAY),
            cache_key(fp, 224, CLAHE), cache_key("other", 224, RGB),
            cache_key(fp, 224, Preprocessing(grayscale=True, clahe=True, clahe_clip=3.0))}
    assert len(keys) == 6
    a = load_or_build(paths, RGB, 16, fp, root=tmp_path, log=lambda _: None)
    b = load_or_build(paths, GRAY, 16, fp, root=tmp_path, log=lambda _: None)
    c = load_or_build(paths, RGB, 24, fp, root=tmp_path, log=lambda _: None)
    assert len({a.directory, b.directory, c.directory}) == 3 and not (b.hit or c.hit)


def test_racing_builds_both_end_with_one_valid_cache(images, tmp_path):
    paths = sorted(images.values()) * 20
    fp = content_fingerprint(paths)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda _: load_or_build(paths, RGB, 32, fp, root=tmp_path, workers=1,
                                    log=lambda _: None), range(4)))
    assert len({r.directory for r in results}) == 1
    for r in results:
        np.testing.assert_array_equal(np.asarray(r.images), np.asarray(results[0].images))
        assert r.ok.all()
    assert [p.name for p in (tmp_path / "images").iterdir()] == [results[0].key]


def test_cache_root_reads_the_environment_when_called(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSWEEP_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here"
    monkeypatch.delenv("MEDSWEEP_CACHE")
    assert cache_root() == Path.home() / ".cache" / "medsweep"
