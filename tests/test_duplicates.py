"""Duplicates: copies and re-encodings are found, verified and grouped, distinct images are not
(alike real images included); clusters never chain; a cluster too large to be copies is
refused. The threshold is validated on phantoms and on real images installed packages ship."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.data.cache import decode_image, load_or_build, preprocess_image
from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.duplicates import (DEFAULT_THRESHOLD, HASH_PREPROCESSING,
                                          HASH_RADIUS, HASH_RESOLUTION, HASH_WORDS,
                                          copy_clusters, find_copies,
                                          group_duplicates, hash_distance,
                                          near_duplicate_rows, pairs_outcome,
                                          perceptual_hashes)
from orchestrator.data.similarity import gray_decodes, similarity
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.splits import assign_folds, assign_splits, content_fingerprint
from orchestrator.data.table import make_table
from orchestrator.errors import DataError
from orchestrator.train.config import TrialConfig
from tasks import get_task
from tests import real_images


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
    return table, np.asarray(cached.images), root


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
    assert hash_distance(hashes[0], hashes[1]) <= HASH_RADIUS
    assert hash_distance(hashes[0], hashes[2]) > 2 * HASH_RADIUS


def test_copies_are_found_within_and_across_splits(tmp_path):
    table, images, _ = dataset(tmp_path)
    pairs = find_copies(table, images).pairs
    assert list(pairs.columns) == ["path_a", "split_a", "path_b", "split_b", "distance",
                                   "similarity"]
    found = {(Path(a).name, sa, Path(b).name, sb) for a, sa, b, sb in
             pairs[["path_a", "split_a", "path_b", "split_b"]].itertuples(index=False)}
    assert found == {("train_000.png", "train", "test_copy_of_000.png", "test"),
                     ("train_recompressed_001.jpg", "train", "val_001.png", "val")}
    exact = pairs[pairs["path_b"].str.endswith("test_copy_of_000.png")]
    assert exact["distance"].tolist() == [0] and exact["similarity"].tolist() == [1.0]
    assert (pairs["similarity"] >= DEFAULT_THRESHOLD).all()
    same_split = find_copies(table.assign(split="train"), images).pairs
    assert len(same_split) == 2  # grouping needs them too: a fold must not separate copies


def test_copies_become_one_group_and_a_given_test_copy_wins(tmp_path):
    table, images, root = dataset(tmp_path)
    pairs = find_copies(table, images).pairs
    kept, dropped = group_duplicates(table, pairs)
    # the held-out copies stay where the layout put them; the training copies leave
    assert names(dropped, "path") == ["train_000.png", "train_recompressed_001.jpg"]
    assert len(kept) == len(table) - 2 and list(kept.columns) == list(table.columns)
    outcome = pairs_outcome(pairs, kept)
    assert set(outcome["final_split_a"]) == {"dropped"}
    assert sorted(outcome["final_split_b"]) == ["test", "val"]


def test_groups_merge_through_patients_and_undecided_copies_share_one_group():
    """A copy joins two patients' groups (they must stay whole), and so on through them."""
    rows = [{"path": f"/d/{name}.png", "label": "a", "source_label": "a", "group": group,
             "split": ""} for name, group in
            [("x1", "lesion1"), ("x2", "lesion1"), ("y", "lesion2"), ("z", "lesion3"),
             ("w", "lesion4")]]
    table = make_table(rows)
    pairs = pd.DataFrame({"path_a": ["/d/x1.png", "/d/y.png"], "split_a": "",
                          "path_b": ["/d/y.png", "/d/z.png"], "split_b": "", "distance": 0,
                          "similarity": 1.0})
    kept, dropped = group_duplicates(table, pairs)
    assert dropped.empty
    by_path = dict(zip(kept["path"], kept["group"]))
    # x2 joins through its lesion; every copy's group becomes the first name, sorted
    assert {by_path[f"/d/{n}.png"] for n in ("x1", "x2", "y", "z")} == {"lesion1"}
    assert by_path["/d/w.png"] == "lesion4"


def test_a_chain_of_merely_similar_images_does_not_join_its_ends():
    """A~B and B~C verified, A~C not: complete linkage keeps A and C apart."""
    gray = np.zeros((4, 8, 8), np.float32)  # every pair is scored below: nothing is measured
    a, b = np.array([0, 1, 0, 2]), np.array([1, 2, 2, 3])
    score = np.array([0.999, 0.998, 0.90, 0.10])
    cluster = copy_clusters(gray, a, b, score, threshold=0.995)
    assert cluster[0] != cluster[2]
    assert (cluster[0] == cluster[1]) != (cluster[1] == cluster[2])  # B with one end only
    assert cluster[3] not in cluster[:3]
    clique = copy_clusters(gray, a[:3], b[:3], np.array([0.999, 0.998, 0.997]), 0.995)
    assert len(set(clique[:3])) == 1  # verified all round: one cluster


def test_many_hashes_with_planted_near_duplicates():
    rng = np.random.default_rng(0)
    n = 3000
    hashes = rng.integers(0, 2**63, (n, HASH_WORDS), dtype=np.int64).astype(np.uint64)
    hashes[10] = hashes[2000]
    hashes[10, 1] ^= np.uint64(2**HASH_RADIUS - 1)  # HASH_RADIUS bits apart
    hashes[11] = hashes[2001]
    hashes[11, 2] ^= np.uint64(2**(HASH_RADIUS + 1) - 1)  # one bit too far
    hashes[12] = hashes[2002]
    a, b, distance = near_duplicate_rows(hashes)
    assert sorted(zip(a.tolist(), b.tolist(), distance.tolist())) == [
        (10, 2000, HASH_RADIUS), (12, 2002, 0)]


# --- the threshold, validated --------------------------------------------------------------------
def _decode(image: np.ndarray) -> np.ndarray:
    return gray_decodes(preprocess_image(image, HASH_PREPROCESSING, HASH_RESOLUTION)[None])[0]


def _recall(originals) -> tuple[int, int]:
    """(found, total) copies of `originals`, every edit of `real_images.COPIES`."""
    found = total = 0
    for raw in originals:
        original = _decode(raw)
        for make in real_images.COPIES.values():
            found += similarity(original, _decode(make(raw))) >= DEFAULT_THRESHOLD
            total += 1
    return found, total


def _merged(images) -> tuple[int, int]:
    """(images clustered with another, largest cluster) of distinct `images`."""
    decoded = np.stack([preprocess_image(x, HASH_PREPROCESSING, HASH_RESOLUTION) for x in images])
    table = pd.DataFrame({"path": [f"{i:05d}" for i in range(len(images))], "split": ""})
    sizes = pd.Series(find_copies(table, decoded).cluster).value_counts()
    return int(sizes[sizes > 1].sum()), int(sizes.iloc[0])


@pytest.fixture(scope="module")
def phantom_images(tmp_path_factory):
    """Every image of four task phantoms (>= 500 distinct images), decoded."""
    out = []
    for key, per_class in (("brain", 45), ("skin", 45), ("leukemia", 40), ("pneumonia", 60)):
        task = get_task(key)
        scan = read_layout(task, write_phantom(task, tmp_path_factory.mktemp(key),
                                               per_class=per_class, seed=0))
        out.append([decode_image(p) for p in scan.table["path"]])
    return out


def test_copies_of_phantoms_are_found(phantom_images):
    rng = np.random.default_rng(1)
    found, total = _recall([images[i] for images in phantom_images
                            for i in rng.choice(len(images), 8, replace=False)])
    assert total == 4 * 8 * len(real_images.COPIES)
    assert found / total >= 0.95, f"recall {found / total:.3f}"


def test_distinct_phantoms_are_rarely_merged(phantom_images):
    merged = [_merged(images) for images in phantom_images]
    total = sum(len(images) for images in phantom_images)
    assert total >= 500
    assert sum(m for m, _ in merged) / total <= 0.005, merged
    assert max(largest for _, largest in merged) <= 2


def test_copies_of_real_images_are_found():
    """Re-encoded, resized, re-exposed, cropped, shifted and 16-bit copies of real digits,
    faces and photograph windows (retina, histology, cells, ...)."""
    rng = np.random.default_rng(2)
    digits, windows = real_images.digits()[0], real_images.windows()
    originals = ([digits[i] for i in rng.choice(len(digits), 10, replace=False)]
                 + [windows[i] for i in rng.choice(len(windows), 10, replace=False)])
    found, total = _recall(originals)
    assert found / total >= 0.95, f"recall {found / total:.3f}"


def test_alike_distinct_real_images_do_not_collapse_into_one_group():
    """1,000 real handwritten digits (the first of scikit-learn's 1,797), alike within each
    class and without copies: the hash alone chained most of them into one group. Verified and
    not chained, almost none merge (`bench/duplicates.py` measures all 1,797)."""
    merged, largest = _merged(real_images.digits()[0][:1000])
    assert largest <= 2
    assert merged / 1000 <= 0.005, f"{merged} of 1000 distinct digits merged"


def test_byte_identical_files_are_copies_whatever_they_show(tmp_path):
    """Blank images are alike by nature (not verified as copies), unless they are one file."""
    blank = np.full((64, 64, 3), 128, np.uint8)
    table = pd.DataFrame({"path": ["a", "b", "c"], "split": ""})
    images = np.stack([blank, blank, blank])
    assert find_copies(table, images).pairs.empty
    pairs = find_copies(table, images, digests=["d1", "d1", "d2"]).pairs
    assert pairs[["path_a", "path_b", "similarity"]].values.tolist() == [["a", "b", 1.0]]


def test_hundreds_of_identical_files_are_one_cluster_quickly_and_refused():
    """400 byte-identical blank files (placeholders a scanner exported, say) are compared once,
    form one cluster, and are refused; 400 blank files that differ in their bytes are alike by
    nature, not copies, and their candidate pairs stay linear in the images (not 80,000)."""
    from orchestrator.data.duplicates import HASH_NEIGHBOURS, NEIGHBOURS, check_clusters

    n = 400
    blank = np.zeros((n, 64, 64, 3), np.uint8)
    table = pd.DataFrame({"path": [f"/d/b{i:03d}.png" for i in range(n)], "split": ""})
    same = find_copies(table, blank, digests=["one"] * n)
    assert len(set(same.cluster)) == 1 and len(same.pairs) == n - 1
    with pytest.raises(DataError, match=f"holds {n} images"):
        check_clusters(table, same, "/d")
    differ = find_copies(table, blank, digests=[str(i) for i in range(n)])
    assert differ.pairs.empty and differ.candidates <= n * (HASH_NEIGHBOURS + NEIGHBOURS)


def test_a_cluster_too_large_to_be_copies_is_refused_before_splitting(tmp_path):
    root = tmp_path / "data"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
    for i in range(60):  # 60 copies of one picture: more than the bound of max(50, 1%)
        cv2.imwrite(str(root / "a" / f"same_{i:02d}.png"), phantom(0, 64))
    for i in range(40):
        cv2.imwrite(str(root / "b" / f"other_{i:02d}.png"), phantom(100 + i, 64))
    with pytest.raises(DataError) as err:
        prepare_dataset(get_task("folder"), root, 32, log=lambda _: None)
    text = str(err.value)
    assert "largest cluster of copies holds 60 images" in text and "a/same_" in text
    assert "--duplicate-threshold (now 0.995)" in text and "--keep-duplicates" in text
    kept = prepare_dataset(get_task("folder"), root, 32, keep_duplicates=True,
                           log=lambda _: None)
    assert len(kept.table) == 100  # the way on that the error names works


def test_the_default_threshold_is_the_trial_configs():
    assert TrialConfig().duplicate_threshold == DEFAULT_THRESHOLD


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
                          "split_b": "", "distance": 0, "similarity": 1.0})
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
