"""Duplicates: copies and re-encodings are found and grouped, distinct images are not; the
near-duplicate threshold is validated on phantom images of four tasks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.data.cache import decode_image, load_or_build, preprocess_image
from orchestrator.data.duplicates import (HASH_PREPROCESSING, HASH_RESOLUTION, HASH_WORDS,
                                          MAX_DISTANCE,
                                          duplicate_pairs, group_duplicates, hash_distance,
                                          pairs_outcome, perceptual_hashes)
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.splits import assign_folds, assign_splits, content_fingerprint
from orchestrator.data.table import make_table
from orchestrator.errors import DataError
from tasks import get_task


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
    """`n` distinct phantoms over train/val/test, plus a copy of #0 in test and a 10% brighter
    JPEG re-encoding of #1 in train."""
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
    brighter = cv2.convertScaleAbs(phantom(1), alpha=1.1, beta=0)  # 10% brighter
    cv2.imwrite(str(root / "train_recompressed_001.jpg"), brighter,
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    rows += [{"path": str(copy), "split": "test"},
             {"path": str(root / "train_recompressed_001.jpg"), "split": "train"}]
    table = make_table([dict(r, label="a", source_label="a", group=Path(r["path"]).name)
                        for r in rows])
    paths = table["path"].tolist()
    cached = load_or_build(paths, HASH_PREPROCESSING, HASH_RESOLUTION, content_fingerprint(paths),
                           root=tmp_path / "cache", log=lambda _: None)
    return table, perceptual_hashes(cached.images), root


def names(frame, column):
    return sorted(Path(p).name for p in frame[column])


def test_hashes_are_256_bit_and_stable_under_jpeg_and_brightness():
    img = cv2.cvtColor(phantom(5, 224), cv2.COLOR_BGR2RGB)
    _, jpeg = cv2.imencode(".jpg", cv2.convertScaleAbs(img, alpha=1.05, beta=8),
                           [cv2.IMWRITE_JPEG_QUALITY, 60])
    altered = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    other = cv2.cvtColor(phantom(6, 224), cv2.COLOR_BGR2RGB)
    hashes = perceptual_hashes(np.stack([img, altered, other]))
    assert hashes.dtype == np.uint64 and hashes.shape == (3, HASH_WORDS) == (3, 4)
    assert hash_distance(hashes[0], hashes[1]) <= MAX_DISTANCE
    assert hash_distance(hashes[0], hashes[2]) > 2 * MAX_DISTANCE


def test_copies_are_found_within_and_across_splits(tmp_path):
    table, hashes, _ = dataset(tmp_path)
    pairs = duplicate_pairs(table, hashes)
    assert list(pairs.columns) == ["path_a", "split_a", "path_b", "split_b", "distance"]
    found = {(Path(a).name, sa, Path(b).name, sb) for a, sa, b, sb in
             pairs[["path_a", "split_a", "path_b", "split_b"]].itertuples(index=False)}
    assert found == {("train_000.png", "train", "test_copy_of_000.png", "test"),
                     ("train_recompressed_001.jpg", "train", "val_001.png", "val")}
    exact = pairs[pairs["path_b"].str.endswith("test_copy_of_000.png")]
    assert exact["distance"].tolist() == [0]
    same_split = duplicate_pairs(table.assign(split="train"), hashes)
    assert len(same_split) == 2  # grouping needs them too: a fold must not separate copies


def test_copies_become_one_group_and_a_given_test_copy_wins(tmp_path):
    table, hashes, root = dataset(tmp_path)
    pairs = duplicate_pairs(table, hashes)
    kept, dropped = group_duplicates(table, pairs)
    # the held-out copies stay where the layout put them; the training copies leave
    assert names(dropped, "path") == ["train_000.png", "train_recompressed_001.jpg"]
    assert len(kept) == len(table) - 2 and list(kept.columns) == list(table.columns)
    outcome = pairs_outcome(pairs, kept)
    assert set(outcome["final_split_a"]) == {"dropped"}
    assert sorted(outcome["final_split_b"]) == ["test", "val"]


def test_groups_merge_transitively_and_undecided_copies_share_one_group():
    rows = [{"path": f"/d/{name}.png", "label": "a", "source_label": "a", "group": group,
             "split": ""} for name, group in
            [("x1", "lesion1"), ("x2", "lesion1"), ("y", "lesion2"), ("z", "lesion3"),
             ("w", "lesion4")]]
    table = make_table(rows)
    words = {"x1": (0, 0, 0), "y": (1, 0, 0), "z": (3, 0, 0),  # x1 ~ y ~ z: 1-2 bits apart
             "x2": (2**40, 2**40 - 1, 0), "w": (2**63, 0, 2**64 - 1)}  # far from every other
    hashes = np.zeros((len(table), HASH_WORDS), np.uint64)
    for i, path in enumerate(table["path"]):  # the table is sorted by path
        hashes[i, :3] = words[Path(path).stem]
    kept, dropped = group_duplicates(table, duplicate_pairs(table, hashes))
    assert dropped.empty
    by_path = dict(zip(kept["path"], kept["group"]))
    # x2 joins through its lesion; every copy's group becomes the first name, sorted
    assert {by_path[f"/d/{n}.png"] for n in ("x1", "x2", "y", "z")} == {"lesion1"}
    assert by_path["/d/w.png"] == "lesion4"


def test_many_hashes_with_planted_near_duplicates():
    rng = np.random.default_rng(0)
    n = 3000
    hashes = rng.integers(0, 2**63, (n, HASH_WORDS), dtype=np.int64).astype(np.uint64)
    hashes[10] = hashes[2000]
    hashes[10, 1] ^= np.uint64(2**MAX_DISTANCE - 1)  # MAX_DISTANCE bits apart
    hashes[11] = hashes[2001]
    hashes[11, 2] ^= np.uint64(2**(MAX_DISTANCE + 1) - 1)  # one bit too far
    hashes[12] = hashes[2002]
    table = make_table([{"path": f"/d/{i:05d}.png", "label": "a", "source_label": "a",
                         "group": str(i), "split": "train" if i < 2000 else "test"}
                        for i in range(n)])
    pairs = duplicate_pairs(table, hashes)
    assert pairs[["path_a", "path_b", "distance"]].values.tolist() == [
        ["/d/00012.png", "/d/02002.png", 0], ["/d/00010.png", "/d/02000.png", MAX_DISTANCE]]


# --- the threshold, validated --------------------------------------------------------------------
VARIANTS = {
    "jpeg70": lambda x: _jpeg(x, 70), "jpeg95": lambda x: _jpeg(x, 95),
    "resize90": lambda x: cv2.resize(x, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA),
    "resize110": lambda x: cv2.resize(x, None, fx=1.1, fy=1.1, interpolation=cv2.INTER_LINEAR),
    "darker10": lambda x: np.clip(x.astype(np.float32) * 0.9, 0, 255).astype(np.uint8),
    "brighter10": lambda x: np.clip(x.astype(np.float32) * 1.1, 0, 255).astype(np.uint8),
}


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def phantom_hashes(tmp_path_factory):
    """Every image of four task phantoms (>= 500 distinct images), hashed as prepare_dataset
    hashes them, plus each image's label and file."""
    out = []
    for key, per_class in (("brain", 45), ("skin", 45), ("leukemia", 40), ("pneumonia", 60)):
        task = get_task(key)
        scan = read_layout(task, write_phantom(task, tmp_path_factory.mktemp(key),
                                               per_class=per_class, seed=0))
        images = np.stack([preprocess_image(decode_image(p), HASH_PREPROCESSING, HASH_RESOLUTION)
                           for p in scan.table["path"]])
        out.append((scan.task, scan.table, perceptual_hashes(images)))
    return out


def test_threshold_finds_reencoded_resized_and_reexposed_copies(phantom_hashes):
    found, total = 0, 0
    for task, table, hashes in phantom_hashes:
        rng = np.random.default_rng(1)
        for i in rng.choice(len(table), 25, replace=False):
            raw = decode_image(table["path"].iloc[i])
            copies = [preprocess_image(make(raw), HASH_PREPROCESSING, HASH_RESOLUTION)
                      for make in VARIANTS.values()]
            distance = hash_distance(perceptual_hashes(np.stack(copies)), hashes[i])
            found += int((distance <= MAX_DISTANCE).sum())
            total += len(copies)
    assert total == 4 * 25 * len(VARIANTS)
    assert found / total >= 0.95, f"recall {found / total:.3f}"


def test_threshold_merges_distinct_images_of_one_class_rarely(phantom_hashes):
    merged, total = 0, 0
    for _, table, hashes in phantom_hashes:
        pairs = duplicate_pairs(table, hashes)
        label = dict(zip(table["path"], table["label"]))
        same_class = pairs[pairs["path_a"].map(label) == pairs["path_b"].map(label)]
        merged += len(set(same_class["path_a"]) | set(same_class["path_b"]))
        total += len(table)
    assert total >= 500
    assert merged / total <= 0.01, f"{merged} of {total} distinct images merged"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(6, 40), groups=st.integers(2, 12), seed=st.integers(0, 10_000),
       given_test=st.floats(0.0, 0.5), pair_count=st.integers(0, 15))
def test_property_copies_never_straddle_splits_or_folds(n, groups, seed, given_test, pair_count):
    """Whatever the groups, the given test images and the copies, after grouping and splitting
    both images of every duplicate pair sit in one split, or one of them was left out."""
    rng = np.random.default_rng(seed)
    group_of = rng.integers(0, groups, n)
    test_groups = set(np.flatnonzero(rng.random(groups) < given_test))
    table = make_table([{"path": f"/d/{i:03d}.png", "label": "ab"[i % 2],
                         "source_label": "ab"[i % 2], "group": f"g{group_of[i]}",
                         "split": "test" if group_of[i] in test_groups else ""}
                        for i in range(n)])
    a = rng.integers(0, n, pair_count)
    b = rng.integers(0, n, pair_count)
    keep = a != b
    path = table["path"].to_numpy()
    pairs = pd.DataFrame({"path_a": path[a[keep]], "split_a": "", "path_b": path[b[keep]],
                          "split_b": "", "distance": 0})
    kept, dropped = group_duplicates(table, pairs)
    assert len(kept) + len(dropped) == n
    if not (kept["split"] == "").any() or kept.empty:
        return  # nothing left to split
    try:
        final = assign_splits(kept, get_task("folder").with_classes(("a", "b")), seed)
        final = assign_folds(final, 2, seed)
    except DataError:
        return  # too few groups to split or fold: refused, never a leak
    where = dict(zip(final["path"], final["split"] + "/" + final["fold"]))
    for pa, pb in zip(pairs["path_a"], pairs["path_b"]):
        if pa in where and pb in where:
            assert where[pa] == where[pb], (pa, pb)  # same split, and same fold
    # a given test image is never moved, and never dropped for a copy of it
    given = set(table.loc[table["split"] == "test", "path"])
    assert all(where.get(p) == "test/" for p in given)
