"""Cross-split duplicates: copies and re-encodings are found, distinct images are not."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from orchestrator.data.cache import load_or_build
from orchestrator.data.duplicates import (drop_later_duplicates, find_cross_split_duplicates,
                                          perceptual_hashes)
from orchestrator.data.splits import content_fingerprint
from orchestrator.data.table import make_table
from tasks.base import Preprocessing


def phantom(seed: int, size: int = 256) -> np.ndarray:
    """A phantom-like image: noisy gray background with a few bright and dark blobs."""
    rng = np.random.default_rng(seed)
    img = rng.normal(90, 12, (size, size)).clip(0, 255).astype(np.uint8)
    for _ in range(4):
        centre = tuple(int(c) for c in rng.integers(30, size - 30, 2))
        axes = tuple(int(a) for a in rng.integers(10, 50, 2))
        cv2.ellipse(img, centre, axes, float(rng.integers(0, 180)), 0, 360,
                    int(rng.choice([30, 220])), -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 2), cv2.COLOR_GRAY2BGR)


def dataset(tmp_path: Path, n: int = 40):
    """`n` distinct phantoms over train/val/test, plus a copy of #0 in test and a brightened
    JPEG re-encoding of #1 in val."""
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i in range(n):
        split = ("train", "val", "test")[i % 3]
        path = root / f"{split}_{i:03d}.png"
        cv2.imwrite(str(path), phantom(i))
        rows.append({"path": str(path), "split": split})
    copy = root / "test_copy_of_000.png"
    copy.write_bytes((root / "train_000.png").read_bytes())
    brighter = cv2.convertScaleAbs(phantom(1), alpha=1.0, beta=12)
    cv2.imwrite(str(root / "train_recompressed_001.jpg"), brighter,
                [cv2.IMWRITE_JPEG_QUALITY, 70])
    rows += [{"path": str(copy), "split": "test"},
             {"path": str(root / "train_recompressed_001.jpg"), "split": "train"}]
    table = make_table([dict(r, label="a", source_label="a", group=Path(r["path"]).name)
                        for r in rows])
    paths = table["path"].tolist()
    cached = load_or_build(paths, Preprocessing(), 224, content_fingerprint(paths),
                           root=tmp_path / "cache", log=lambda _: None)
    return table, perceptual_hashes(cached.images), root


def test_hashes_are_64_bit_and_stable_under_jpeg_and_brightness():
    img = cv2.cvtColor(phantom(5, 224), cv2.COLOR_BGR2RGB)
    _, jpeg = cv2.imencode(".jpg", cv2.convertScaleAbs(img, alpha=1.05, beta=8),
                           [cv2.IMWRITE_JPEG_QUALITY, 60])
    altered = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    hashes = perceptual_hashes(np.stack([img, altered, cv2.cvtColor(phantom(6, 224),
                                                                    cv2.COLOR_BGR2RGB)]))
    assert hashes.dtype == np.uint64
    assert np.bitwise_count(hashes[0] ^ hashes[1]) <= 4
    assert np.bitwise_count(hashes[0] ^ hashes[2]) > 10


def test_copies_across_splits_are_found_and_distinct_images_are_not(tmp_path):
    table, hashes, root = dataset(tmp_path)
    pairs = find_cross_split_duplicates(table, hashes)
    assert list(pairs.columns) == ["path_a", "split_a", "path_b", "split_b", "distance"]
    found = {(Path(a).name, sa, Path(b).name, sb) for a, sa, b, sb in
             pairs[["path_a", "split_a", "path_b", "split_b"]].itertuples(index=False)}
    assert found == {("train_000.png", "train", "test_copy_of_000.png", "test"),
                     ("train_recompressed_001.jpg", "train", "val_001.png", "val")}
    exact = pairs[pairs["path_b"].str.endswith("test_copy_of_000.png")]
    assert exact["distance"].tolist() == [0]


def test_duplicates_within_one_split_are_not_reported(tmp_path):
    table, hashes, _ = dataset(tmp_path)
    table = table.assign(split="train")
    assert find_cross_split_duplicates(table, hashes).empty


def test_dropping_removes_the_later_split_copy(tmp_path):
    table, hashes, root = dataset(tmp_path)
    pairs = find_cross_split_duplicates(table, hashes)
    kept, dropped = drop_later_duplicates(table, pairs)
    assert sorted(Path(p).name for p in dropped["path"]) == ["test_copy_of_000.png",
                                                             "val_001.png"]
    assert len(kept) == len(table) - 2
    assert {str(root / "train_000.png"), str(root / "train_recompressed_001.jpg")} <= set(
        kept["path"])
    assert list(kept.columns) == list(table.columns)


def test_many_hashes_with_planted_near_duplicates():
    rng = np.random.default_rng(0)
    n = 5000
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    hashes[10] = hashes[4000] ^ np.uint64(0b10110)  # 3 bits apart
    hashes[11] = hashes[4001] ^ np.uint64(0b11111)  # 5 bits: too far
    hashes[12] = hashes[4002]
    table = make_table([{"path": f"/d/{i:05d}.png", "label": "a", "source_label": "a",
                         "group": str(i), "split": "train" if i < 4000 else "test"}
                        for i in range(n)])
    pairs = find_cross_split_duplicates(table, hashes)
    assert pairs[["path_a", "path_b", "distance"]].values.tolist() == [
        ["/d/00012.png", "/d/04002.png", 0], ["/d/00010.png", "/d/04000.png", 3]]
    assert find_cross_split_duplicates(table, hashes, max_distance=5).shape[0] == 3
