"""How well the duplicate check separates copies from distinct images: on each task's phantom
and on real images that installed packages ship (`tests/real_images.py`: scikit-learn's
handwritten digits, scikit-image's LFW faces, windows of scikit-image's and scikit-learn's
photographs, retina and histology among them).

- recall: the share of copies found (re-encoded at JPEG 70/85/95, resized by 90%/110%,
  re-exposed by x0.9/x1.1, cropped by 3% a side, shifted by a 4% crop of two sides, written as
  16-bit or 12-bit PNG, JPEG 80 after a 90% resize) of sampled images of each set;
- false merges: the share of distinct images that `find_copies` puts in a cluster with any
  other image, and the largest cluster (1 where nothing merges); beside them, what the hash
  alone (25 bits, closed transitively: the check before verification) grouped.

`tests/test_duplicates.py` asserts floors on the same recipe; this prints the figures behind them.

    .venv/bin/python bench/duplicates.py [--per-class 130] [--threshold 0.995]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.data.cache import decode_image, preprocess_image  # noqa: E402
from orchestrator.data.duplicates import (DEFAULT_THRESHOLD, HASH_PREPROCESSING,  # noqa: E402
                                          HASH_RESOLUTION, find_copies, near_duplicate_rows,
                                          perceptual_hashes)
from orchestrator.data.similarity import gray_decodes, similarity  # noqa: E402
from orchestrator.data.layouts import read_layout  # noqa: E402
from orchestrator.data.phantoms import write_phantom  # noqa: E402
from tasks import get_task  # noqa: E402
from tests import real_images  # noqa: E402


def decode(image: np.ndarray) -> np.ndarray:
    return preprocess_image(image, HASH_PREPROCESSING, HASH_RESOLUTION)


def false_merges(images: list[np.ndarray], threshold: float) -> dict:
    """Distinct images: how many `find_copies` clusters with another, and the largest cluster."""
    decoded = np.stack([decode(x) for x in images])
    table = pd.DataFrame({"path": [f"{i:05d}" for i in range(len(images))], "split": ""})
    start = time.perf_counter()
    copies = find_copies(table, decoded, threshold=threshold)
    seconds = time.perf_counter() - start
    sizes = pd.Series(copies.cluster).value_counts()
    merged = int(sizes[sizes > 1].sum())
    # what the hash alone (HASH_RADIUS bits, closed transitively) made of them, as before
    a, b, _ = near_duplicate_rows(perceptual_hashes(decoded))
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(images), len(images)))
    chained = np.bincount(connected_components(graph, directed=False)[1])
    return {"images": len(images), "hash_only_grouped": int(chained[chained > 1].sum()),
            "hash_only_largest": int(chained.max()), "false_merged": merged,
            "false_merge_rate": round(merged / len(images), 4),
            "largest_cluster": int(sizes.iloc[0]), "pairs_verified": copies.candidates,
            "seconds": round(seconds, 1)}


def recall(originals: list[np.ndarray], threshold: float) -> dict:
    """Copies of each original, verified against it: the share found, overall and per edit."""
    found = {name: [] for name in real_images.COPIES}
    for raw in originals:
        original = gray_decodes(decode(raw)[None])[0]
        for name, make in real_images.COPIES.items():
            copy = gray_decodes(decode(make(raw))[None])[0]
            found[name].append(similarity(original, copy) >= threshold)
    per_edit = {name: float(np.mean(v)) for name, v in found.items()}
    worst = min(per_edit, key=per_edit.get)
    return {"copies": len(originals) * len(found),
            "recall": round(float(np.mean([x for v in found.values() for x in v])), 3),
            "worst_edit": f"{worst} {per_edit[worst]:.2f}"}


def phantom_images(task_name: str, per_class: int, folder: Path) -> list[np.ndarray]:
    task = get_task(task_name)
    scan = read_layout(task, write_phantom(task, folder / task_name, per_class=per_class, seed=0))
    return [decode_image(p) for p in scan.table["path"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=130)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--sampled", type=int, default=40, help="originals copied per set")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    sets = {"digits (scikit-learn)": real_images.digits()[0],
            "LFW faces (scikit-image)": real_images.faces(),
            "photo windows (scikit-image, scikit-learn)": real_images.windows()}
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-dup-") as tmp:
        for name in ("brain", "skin", "leukemia", "pneumonia"):
            sets[f"{name} phantom"] = phantom_images(name, args.per_class, Path(tmp))
        rows = []
        for name, images in sets.items():
            sample = [images[i] for i in rng.choice(len(images), args.sampled, replace=False)]
            rows.append({"set": name, **false_merges(images, args.threshold),
                         **recall(sample, args.threshold)})
    print(f"copies verified on the {HASH_RESOLUTION} px gray decode, similarity >= "
          f"{args.threshold}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
