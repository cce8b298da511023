"""Exact and near-duplicate images (public data sets have them), made into groups before splitting.

A test image that is a copy, re-encoding or slight re-exposure of a training image inflates the
test score. A 256-bit dHash (brightness gradients of a 16x17 thumbnail of a 64 px gray decode)
survives JPEG re-compression, resizing and brightness shifts; two images within MAX_DISTANCE bits
are the same picture. The threshold is validated in `tests/test_duplicates.py`: copies re-encoded
at JPEG quality 70-95, resized by +-10% or re-exposed by +-10% are found (recall >= 0.95), and
distinct phantom images of one class merge in <= 1% of cases.

Copies join one group, so a split or a fold never separates them. Where a copy sits in a given
held-out split (an official `test/` or `val/` folder), the other copies leave the data set: the
published evaluation split stays as it is, and training loses an image it already has.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.base import SPLITS, Preprocessing

HASH_SIZE = 16  # a HASH_SIZE x (HASH_SIZE + 1) thumbnail: HASH_SIZE**2 gradient bits
HASH_WORDS = HASH_SIZE * HASH_SIZE // 64
HASH_RESOLUTION = 64  # images are hashed from this decode, whatever a trial's resolution
# ... in plain gray: a task's contrast enhancement (CLAHE) amplifies re-encoding noise, and the
# same picture must hash alike whatever a task does to it for training.
HASH_PREPROCESSING = Preprocessing(grayscale=True)
MAX_DISTANCE = 25  # of 256 bits (~10%)
CHUNK = 64  # images converted to float at a time
BLOCK = 64  # hashes per XOR block: a BLOCK x U x 4 block is 40 MB of uint64 at U = 20k
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB, as cv2's RGB2GRAY
PAIR_COLUMNS = ["path_a", "split_a", "path_b", "split_b", "distance"]
_HELD_OUT = {s: i for i, s in enumerate(SPLITS)}  # train < val < test


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """dHash of each (N, H, W, 3) uint8 RGB image (a memmap is read chunk by chunk) ->
    (N, HASH_WORDS) uint64."""
    n, h, w = images.shape[:3]
    rows, cols = _area_matrix(h, HASH_SIZE), _area_matrix(w, HASH_SIZE + 1).T
    hashes = np.zeros((n, HASH_WORDS), dtype=np.uint64)
    for start in range(0, n, CHUNK):
        gray = np.asarray(images[start:start + CHUNK], dtype=np.float32) @ GRAY_WEIGHTS
        small = rows @ (gray @ cols)  # (k, HASH_SIZE, HASH_SIZE + 1) area-averaged thumbnails
        bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), -1)
        hashes[start:start + len(small)] = np.packbits(bits, axis=1).view(">u8")
    return hashes


def hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between (..., HASH_WORDS) hashes."""
    return np.bitwise_count(np.asarray(a) ^ np.asarray(b)).sum(axis=-1).astype(np.int64)


def near_duplicate_rows(hashes: np.ndarray, max_distance: int = MAX_DISTANCE
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance) for every row pair a < b whose hashes differ in <= `max_distance` bits."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64).reshape(len(hashes), -1)
    unique, which = np.unique(hashes, axis=0, return_inverse=True)
    which = which.ravel()
    found = [(np.arange(len(unique)), np.arange(len(unique)), np.zeros(len(unique), np.int64))]
    for start in range(0, len(unique), BLOCK):
        block = unique[start:start + BLOCK]
        distance = hash_distance(block[:, None, :], unique[None, start:, :])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # columns start at `start`: the diagonal is the block's own hash
        found.append((start + i[keep], start + j[keep], distance[i[keep], j[keep]]))
    pairs = pd.DataFrame({"u_a": np.concatenate([f[0] for f in found]),
                          "u_b": np.concatenate([f[1] for f in found]),
                          "distance": np.concatenate([f[2] for f in found])})
    rows = pd.DataFrame({"u": which, "row": np.arange(len(hashes))})
    pairs = (pairs.merge(rows.rename(columns={"u": "u_a", "row": "row_a"}), on="u_a")
                  .merge(rows.rename(columns={"u": "u_b", "row": "row_b"}), on="u_b"))
    pairs = pairs[(pairs["u_a"] != pairs["u_b"]) | (pairs["row_a"] < pairs["row_b"])]
    a, b = pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()
    return np.minimum(a, b), np.maximum(a, b), pairs["distance"].to_numpy()


def duplicate_pairs(table: pd.DataFrame, hashes: np.ndarray,
                    max_distance: int = MAX_DISTANCE) -> pd.DataFrame:
    """Every pair of rows of `table` (aligned with `hashes`; decoded rows only: every blank image
    looks alike) within `max_distance` bits; the earlier split (train < val < test) is `a`."""
    if len(hashes) != len(table):
        raise ValueError(f"{len(hashes)} hashes for a table of {len(table)} rows")
    a, b, distance = near_duplicate_rows(hashes, max_distance)
    split = table["split"].to_numpy()
    rank = table["split"].map(_HELD_OUT).fillna(-1).to_numpy()
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    path = table["path"].to_numpy()
    out = pd.DataFrame({"path_a": path[a], "split_a": split[a], "path_b": path[b],
                        "split_b": split[b], "distance": distance}, columns=PAIR_COLUMNS)
    return out.astype({"distance": int}).sort_values(
        ["distance", "path_b", "path_a"], kind="stable").reset_index(drop=True)


def group_duplicates(table: pd.DataFrame,
                     pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the groups of every duplicate pair (transitively), then leave out the copies that
    would straddle a given split: in a merged group with a given held-out split (val or test),
    every row elsewhere is dropped. Returns (kept rows, dropped rows), `table`'s columns.

    A merged group is named after its first original group (sorted), so groups stay readable.
    """
    if pairs.empty:
        return table.reset_index(drop=True), table.iloc[0:0].reset_index(drop=True)
    groups = table["group"].to_numpy()
    names, index = np.unique(groups, return_inverse=True)
    by_path = pd.Series(index, index=table["path"].to_numpy())
    ga, gb = by_path[pairs["path_a"]].to_numpy(), by_path[pairs["path_b"]].to_numpy()
    graph = coo_matrix((np.ones(len(ga)), (ga, gb)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    first = pd.Series(names).groupby(component).transform("min").to_numpy()  # names sorted
    merged = table.assign(group=first[index])
    rank = merged["split"].map(_HELD_OUT).fillna(-1)
    held = rank.groupby(merged["group"]).transform("max")
    drop = (held >= _HELD_OUT["val"]) & (rank != held)
    return (merged[~drop].reset_index(drop=True), merged[drop].reset_index(drop=True))


def pairs_outcome(pairs: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """The pairs with where each copy ended up: its final split, or "dropped"."""
    where = final.set_index("path")["split"]
    return pairs.assign(final_split_a=pairs["path_a"].map(where).fillna("dropped"),
                        final_split_b=pairs["path_b"].map(where).fillna("dropped"))


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that average input pixels by overlap: cv2's INTER_AREA, as a matmul."""
    edges = np.linspace(0, n_in, n_out + 1)
    pixel = np.arange(n_in)
    overlap = (np.minimum(pixel + 1, edges[1:, None]) - np.maximum(pixel, edges[:-1, None]))
    weights = np.clip(overlap, 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
