"""Exact and near copies of an image (public data sets have them), verified at the pixel level
and made into groups before splitting.

A test image that is a copy, re-encoding or slight re-exposure of a training image inflates the
test score. But real medical images are alike by nature (chest X-rays share their layout, MRI
slices their anatomy), so a cheap likeness test closed transitively merges different patients
into giant groups. Hence three steps, each measured in `docs/benchmarks.md`:

1. Candidates, cheaply: pairs whose 256-bit dHash (brightness gradients of a 16x17 thumbnail of
   the 64 px gray decode) differ in <= HASH_RADIUS bits, plus each image's NEIGHBOURS nearest
   blurred 16x16 thumbnails (a crop or shift moves the hash, not the thumbnail).
2. Verification of each candidate pair on the 64 px decode (`similarity.py`): the copy is aligned
   to the original (shifts and scales of a few percent: crops), both are slightly blurred, and
   their normalised cross-correlation is credited with the images' own fine texture (a copy of
   a textured image loses more to re-encoding than one of a smooth image). A pair is a copy
   when that similarity reaches the threshold (DEFAULT_THRESHOLD, `--duplicate-threshold`) and
   its contrast differs by at most MAX_GAIN. Byte-identical files are copies whatever they show.
3. Clusters by complete linkage over verified pairs: a chain A~B~C of merely similar images
   does not join A and C unless A~C is verified too. `check_clusters` then refuses a cluster
   larger than max(MAX_CLUSTER, MAX_CLUSTER_SHARE of the data set) before anything is split.

Copies join one group, so a split or a fold never separates them. Where a copy sits in a given
held-out split (an official `test/` or `val/` folder), the other copies leave the data set: the
published evaluation split stays as it is, and training loses an image it already has.
"""
from __future__ import annotations

import dataclasses

import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from orchestrator.data.similarity import CHUNK, gray_decodes, similarities
from orchestrator.errors import DataError
from tasks.base import SPLITS, Preprocessing

HASH_SIZE = 16  # a HASH_SIZE x (HASH_SIZE + 1) thumbnail: HASH_SIZE**2 gradient bits
HASH_WORDS = HASH_SIZE * HASH_SIZE // 64
HASH_RESOLUTION = 64  # images are compared at this decode, whatever a trial's resolution
# ... in plain gray: a task's contrast enhancement (CLAHE) amplifies re-encoding noise, and the
# same picture must compare alike whatever a task does to it for training.
HASH_PREPROCESSING = Preprocessing(grayscale=True)


def hash_preprocessing(task_spec: Preprocessing) -> Preprocessing:
    """The hashing preprocessing, reading DICOM files through the task's window and frame: two
    copies of a scan are compared as they will be trained on."""
    return dataclasses.replace(HASH_PREPROCESSING, dicom_window=task_spec.dicom_window,
                               dicom_frame=task_spec.dicom_frame)
HASH_RADIUS = 25  # of 256 bits (~10%): candidates only, every pair is verified
NEIGHBOURS = 8  # nearest thumbnails per image, also candidates
HASH_NEIGHBOURS = 32  # nearest hashes within the radius per image (the rest are alike too)
THUMB_SIZE, THUMB_BLUR, MIN_THUMB_SIMILARITY = 16, 2.0, 0.8
DEFAULT_THRESHOLD = 0.995
SLOW_PAIRS = 20_000  # candidate pairs from which verifying them is announced
SECONDS_PER_PAIR = 0.002  # on one core (bench/duplicates.py: 13,223 pairs in 13.4 s on 2)
FULL_LINKAGE = 120  # components up to this size get every pair measured before linkage
LINKAGE_LIMIT = 5000  # components above this size are not split (an n x n matrix each)
MAX_CLUSTER, MAX_CLUSTER_SHARE = 50, 0.01  # a copy cluster above both is refused
BLOCK = 64  # hashes per XOR block: a BLOCK x U x 4 block is 40 MB of uint64 at U = 20k
PAIR_COLUMNS = ["path_a", "split_a", "path_b", "split_b", "distance", "similarity"]
_HELD_OUT = {s: i for i, s in enumerate(SPLITS)}  # train < val < test


# --- 1. candidates -------------------------------------------------------------------------------
def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """dHash of each (N, H, W, 3) uint8 RGB image (a memmap is read chunk by chunk) ->
    (N, HASH_WORDS) uint64."""
    return gray_hashes(gray_decodes(images))


def gray_hashes(gray: np.ndarray) -> np.ndarray:
    """dHash of each (N, H, W) float32 gray decode (`similarity.gray_decodes`)."""
    n, h, w = gray.shape
    rows, cols = _area_matrix(h, HASH_SIZE), _area_matrix(w, HASH_SIZE + 1).T
    hashes = np.zeros((n, HASH_WORDS), dtype=np.uint64)
    for start in range(0, n, CHUNK):
        small = rows @ (gray[start:start + CHUNK] @ cols)  # area-averaged thumbnails
        bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), -1)
        hashes[start:start + len(small)] = np.packbits(bits, axis=1).view(">u8")
    return hashes


def hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between (..., HASH_WORDS) hashes."""
    return np.bitwise_count(np.asarray(a) ^ np.asarray(b)).sum(axis=-1).astype(np.int64)


def near_duplicate_rows(hashes: np.ndarray, max_distance: int = HASH_RADIUS
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


def thumbnails(gray: np.ndarray) -> np.ndarray:
    """(N, 64, 64) float32 gray -> (N, THUMB_SIZE**2) zero-mean unit vectors of blurred
    thumbnails: their dot product is a crop- and shift-tolerant likeness."""
    out = np.stack([cv2.resize(cv2.GaussianBlur(g, (0, 0), THUMB_BLUR),
                               (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).ravel()
                    for g in gray]) if len(gray) else np.zeros((0, THUMB_SIZE ** 2), np.float32)
    out -= out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def nearest_rows(thumbs: np.ndarray, k: int = NEIGHBOURS,
                 floor: float = MIN_THUMB_SIMILARITY) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), a < b: each row with its `k` most alike thumbnails at or above `floor`."""
    n = len(thumbs)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a_all, b_all = [], []
    for start in range(0, n, 1024):
        sims = thumbs[start:start + 1024] @ thumbs.T
        rows = np.arange(start, start + len(sims))
        sims[rows - start, rows] = -np.inf
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        keep = np.take_along_axis(sims, nearest, axis=1) >= floor
        a_all.append(np.repeat(rows, k)[keep.ravel()])
        b_all.append(nearest.ravel()[keep.ravel()])
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    return np.minimum(a, b), np.maximum(a, b)


def candidate_pairs(gray: np.ndarray, hashes: np.ndarray) -> pd.DataFrame:
    """Row pairs worth verifying (a < b), with their hash distance in bits: each row's
    HASH_NEIGHBOURS nearest hashes within HASH_RADIUS (many alike images would otherwise make
    the pairs quadratic) and its NEIGHBOURS nearest thumbnails."""
    a, b, distance = near_duplicate_rows(hashes)
    hashed = _nearest_per_row(pd.DataFrame({"a": a, "b": b, "distance": distance}),
                              HASH_NEIGHBOURS)
    na, nb = nearest_rows(thumbnails(gray))
    frame = pd.concat([hashed[["a", "b"]],
                       pd.DataFrame({"a": na, "b": nb})]).drop_duplicates(["a", "b"])
    frame = frame[frame["a"] != frame["b"]].reset_index(drop=True)
    frame["distance"] = hash_distance(hashes[frame["a"].to_numpy()],
                                      hashes[frame["b"].to_numpy()]) if len(frame) else 0
    return frame


def _nearest_per_row(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """The pairs that are among the `k` closest of either of their rows."""
    if pairs.empty:
        return pairs
    pairs = pairs.sort_values("distance", kind="stable").reset_index(drop=True)
    ends = pd.concat([pairs["a"], pairs["b"]], ignore_index=True)
    rank = ends.groupby(ends).cumcount().to_numpy()
    return pairs[(rank[:len(pairs)] < k) | (rank[len(pairs):] < k)]


# --- 2. verification: orchestrator/data/similarity.py ---------------------------------------


# --- 3. clusters ---------------------------------------------------------------------------------
def copy_clusters(gray: np.ndarray, a: np.ndarray, b: np.ndarray, score: np.ndarray,
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """A cluster number per row: rows in one cluster are pairwise verified copies (complete
    linkage). A component of verified pairs up to FULL_LINKAGE rows has every pair measured; a
    larger one counts unmeasured pairs as different; one above LINKAGE_LIMIT rows stays whole
    (far too large to be copies: `check_clusters` refuses it). Singletons are their own."""
    n = len(gray)
    verified = score >= threshold
    graph = coo_matrix((np.ones(int(verified.sum())), (a[verified], b[verified])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    cluster = component.copy()
    next_id = n
    sizes = np.bincount(component)
    for c in np.flatnonzero((sizes > 2) & (sizes <= LINKAGE_LIMIT)):
        rows = np.flatnonzero(component == c)
        inside = np.isin(a, rows) & np.isin(b, rows)
        i, j = np.searchsorted(rows, a[inside]), np.searchsorted(rows, b[inside])
        scores = np.full((len(rows), len(rows)), np.nan)
        scores[i, j] = scores[j, i] = score[inside]
        if len(rows) <= FULL_LINKAGE:
            ui, uj = np.triu_indices(len(rows), 1)
            missing = np.isnan(scores[ui, uj])
            measured = similarities(gray, rows[ui[missing]], rows[uj[missing]])
            scores[ui[missing], uj[missing]] = scores[uj[missing], ui[missing]] = measured
        distance = np.where(np.nan_to_num(scores, nan=0.0) >= threshold, 1 - scores, 1.0)
        np.fill_diagonal(distance, 0.0)
        labels = fcluster(linkage(squareform(distance, checks=False), method="complete"),
                          t=1 - threshold, criterion="distance")
        cluster[rows] = next_id + labels
        next_id += labels.max() + 1
    return cluster


@dataclass(frozen=True)
class Copies:
    """The verified copies of a table's rows."""

    pairs: pd.DataFrame  # PAIR_COLUMNS: verified pairs within one cluster, earlier split first
    cluster: np.ndarray  # a number per row of the table; rows sharing one are copies
    candidates: int  # pairs verified
    verified_apart: int  # verified pairs that complete linkage left in different clusters
    threshold: float = DEFAULT_THRESHOLD


def find_copies(table: pd.DataFrame, images: np.ndarray, *,
                threshold: float = DEFAULT_THRESHOLD, digests: list[str] | None = None,
                workers: int | None = None, log: Callable[[str], None] | None = None) -> Copies:
    """The copies among `table`'s rows (aligned with `images`: their 64 px decodes; decoded
    rows only); with `digests` (each row's file hash), byte-identical files are copies too.
    `log` hears how many pairs are verified when they are many (about 1 ms each per core)."""
    if len(images) != len(table):
        raise ValueError(f"{len(images)} images for a table of {len(table)} rows")
    # Byte-identical files are one picture: compared once, through their first row
    if digests is None:
        first = np.arange(len(table))
    else:
        _, first_of, which = np.unique(np.asarray(digests), return_index=True,
                                       return_inverse=True)
        first = first_of[which.ravel()]
    unique = np.unique(first)
    gray = gray_decodes(images[unique])
    hashes = gray_hashes(gray)
    frame = candidate_pairs(gray, hashes)
    a, b = frame["a"].to_numpy(), frame["b"].to_numpy()
    if log is not None and len(frame) >= SLOW_PAIRS:
        seconds = len(frame) * SECONDS_PER_PAIR / (workers or os.cpu_count() or 1)
        log(f"verifying {len(frame)} candidate duplicate pairs of {len(unique)} images on the "
            f"{HASH_RESOLUTION} px decode (about {seconds:.0f} s)")
    score = similarities(gray, a, b, workers)
    cluster_of_unique = copy_clusters(gray, a, b, score, threshold)
    cluster = cluster_of_unique[np.searchsorted(unique, first)]
    verified = score >= threshold
    together = cluster_of_unique[a] == cluster_of_unique[b]
    chosen = frame.assign(similarity=score, a=unique[a], b=unique[b])[verified & together]
    same = np.flatnonzero(first != np.arange(len(table)))  # each copy with its first file
    chosen = pd.concat([chosen, pd.DataFrame({"a": first[same], "b": same, "distance": 0,
                                              "similarity": 1.0})], ignore_index=True)
    return Copies(pairs=_pair_frame(table, chosen), cluster=cluster, candidates=len(frame),
                  verified_apart=int((verified & ~together).sum()), threshold=threshold)


def _pair_frame(table: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    a, b = chosen["a"].to_numpy(dtype=np.int64), chosen["b"].to_numpy(dtype=np.int64)
    rank = table["split"].map(_HELD_OUT).fillna(-1).to_numpy()
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    path, split = table["path"].to_numpy(), table["split"].to_numpy()
    out = pd.DataFrame({"path_a": path[a], "split_a": split[a], "path_b": path[b],
                        "split_b": split[b], "distance": chosen["distance"].to_numpy(),
                        "similarity": chosen["similarity"].to_numpy().round(4)},
                       columns=PAIR_COLUMNS)
    return out.astype({"distance": int}).sort_values(
        ["similarity", "path_b", "path_a"], ascending=[False, True, True],
        kind="stable").reset_index(drop=True)


def check_clusters(table: pd.DataFrame, copies: Copies, root: str | os.PathLike) -> None:
    """Refuse copy clusters too large to be copies: more likely alike, distinct images."""
    sizes = pd.Series(copies.cluster).value_counts()
    bound = max(MAX_CLUSTER, int(MAX_CLUSTER_SHARE * len(table)))
    if sizes.empty or sizes.iloc[0] <= bound:
        return
    rows = np.flatnonzero(copies.cluster == sizes.index[0])
    shown = ", ".join(os.path.relpath(p, root) for p in table["path"].to_numpy()[rows[:4]])
    raise DataError(
        f"the largest cluster of copies holds {sizes.iloc[0]} images "
        f"({sizes.iloc[0] / len(table):.1%} of {len(table)}; at most {bound} are believable), "
        f"e.g. {shown}: so many are more likely alike, distinct images than copies. Look at a "
        f"few: if they are distinct, raise --duplicate-threshold (now {copies.threshold}); if "
        "they are copies, remove them or pass --keep-duplicates")


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
