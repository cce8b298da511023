"""Exact and near-duplicate images across splits (public data sets have them).

A test image that is a copy, re-encoding or slight re-exposure of a training image inflates the
test score. dHash (64 bits from brightness gradients of a 9x8 thumbnail) survives JPEG
re-compression, resizing and brightness shifts; two images within a few bits are the same picture.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.base import SPLITS

CHUNK = 64  # images converted to float at a time (40 MB at 224 px)
BLOCK = 256  # hashes per XOR block: a BLOCK x 20k block is 40 MB of uint64
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB, as cv2's RGB2GRAY
PAIR_COLUMNS = ["path_a", "split_a", "path_b", "split_b", "distance"]


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """dHash of each (N, H, W, 3) uint8 RGB image (a memmap is read chunk by chunk) -> uint64."""
    n, h, w = images.shape[:3]
    rows, cols = _area_matrix(h, 8), _area_matrix(w, 9).T
    hashes = np.zeros(n, dtype=np.uint64)
    for start in range(0, n, CHUNK):
        gray = np.asarray(images[start:start + CHUNK], dtype=np.float32) @ GRAY_WEIGHTS
        small = rows @ (gray @ cols)  # (k, 8, 9): area-averaged thumbnails, batched
        bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), 64)
        hashes[start:start + len(small)] = np.packbits(bits, axis=1).view(">u8").ravel()
    return hashes


def find_cross_split_duplicates(table: pd.DataFrame, hashes: np.ndarray,
                                max_distance: int = 4) -> pd.DataFrame:
    """Pairs of images in different splits whose hashes differ in at most `max_distance` bits.

    `hashes` is aligned with `table` (pass only rows that decoded: every blank image looks alike).
    The earlier split (train < val < test) is always `a`.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) != len(table):
        raise ValueError(f"{len(hashes)} hashes for a table of {len(table)} rows")
    a, b = _row_pairs(hashes, max_distance)
    split = table["split"].to_numpy()
    a, b = a[split[a] != split[b]], b[split[a] != split[b]]
    rank = table["split"].map({s: i for i, s in enumerate(SPLITS)}).fillna(len(SPLITS)).to_numpy()
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    path = table["path"].to_numpy()
    out = pd.DataFrame({"path_a": path[a], "split_a": split[a], "path_b": path[b],
                        "split_b": split[b], "distance": np.bitwise_count(hashes[a] ^ hashes[b])},
                       columns=PAIR_COLUMNS).astype({"distance": int})
    return out.sort_values(["distance", "path_b", "path_a"], kind="stable").reset_index(drop=True)


def drop_later_duplicates(table: pd.DataFrame,
                          pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove each pair's later-split image (`path_b`): a duplicate never inflates a test score.

    Returns (kept rows, dropped rows), both with `table`'s columns and a fresh index.
    """
    drop = table["path"].isin(set(pairs["path_b"]))
    return table[~drop].reset_index(drop=True), table[drop].reset_index(drop=True)


def _row_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Row index pairs (a < b within one hash) whose hashes are within `max_distance` bits."""
    unique, which = np.unique(hashes, return_inverse=True)
    rows = pd.DataFrame({"u": which.ravel(), "row": np.arange(len(hashes))})
    pairs = (_near_hash_pairs(unique, max_distance)
             .merge(rows.rename(columns={"u": "u_a", "row": "row_a"}), on="u_a")
             .merge(rows.rename(columns={"u": "u_b", "row": "row_b"}), on="u_b"))
    pairs = pairs[(pairs["u_a"] != pairs["u_b"]) | (pairs["row_a"] < pairs["row_b"])]
    return pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()


def _near_hash_pairs(unique: np.ndarray, max_distance: int) -> pd.DataFrame:
    """(u_a, u_b) index pairs of distinct hashes within `max_distance` bits, u_a <= u_b.

    Identical hashes are one entry in `unique`, so exact duplicates are the (u, u) pairs;
    the rest comes from XOR + popcount in blocks, a BLOCK x U matrix at a time.
    """
    found_a, found_b = [np.arange(len(unique))], [np.arange(len(unique))]
    for start in range(0, len(unique), BLOCK):
        block = unique[start:start + BLOCK]
        distance = np.bitwise_count(block[:, None] ^ unique[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # columns start at `start`: the diagonal is the block's own hash
        found_a.append(start + i[keep])
        found_b.append(start + j[keep])
    return pd.DataFrame({"u_a": np.concatenate(found_a), "u_b": np.concatenate(found_b)})


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that average input pixels by overlap: cv2's INTER_AREA, as a matmul."""
    edges = np.linspace(0, n_in, n_out + 1)
    pixel = np.arange(n_in)
    overlap = (np.minimum(pixel + 1, edges[1:, None]) - np.maximum(pixel, edges[:-1, None]))
    weights = np.clip(overlap, 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
