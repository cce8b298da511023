"""How well the near-duplicate threshold separates copies from distinct images, per task.

On each task's phantom: recall, the share of re-encoded (JPEG 70 and 95), resized (90%, 110%)
and re-exposed (x0.9, x1.1) copies of 25 images found within MAX_DISTANCE bits; and the
false-merge rate, the share of distinct images of one class within MAX_DISTANCE of another.
`tests/test_duplicates.py` asserts the floors (recall >= 0.95, false merges <= 1%) on the same
recipe; this prints the figures behind them.

    .venv/bin/python bench/duplicates.py [--per-class 130]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.data.cache import decode_image, preprocess_image  # noqa: E402
from orchestrator.data.duplicates import (HASH_PREPROCESSING, HASH_RESOLUTION,  # noqa: E402
                                          MAX_DISTANCE, duplicate_pairs, hash_distance,
                                          perceptual_hashes)
from orchestrator.data.layouts import read_layout  # noqa: E402
from orchestrator.data.phantoms import write_phantom  # noqa: E402
from tasks import get_task  # noqa: E402


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _scaled(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


COPIES = {
    "jpeg70": lambda x: _jpeg(x, 70), "jpeg95": lambda x: _jpeg(x, 95),
    "resize90": lambda x: cv2.resize(x, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA),
    "resize110": lambda x: cv2.resize(x, None, fx=1.1, fy=1.1, interpolation=cv2.INTER_LINEAR),
    "darker10": lambda x: _scaled(x, 0.9), "brighter10": lambda x: _scaled(x, 1.1),
}


def measure(task_name: str, per_class: int, folder: Path) -> dict:
    task = get_task(task_name)
    scan = read_layout(task, write_phantom(task, folder / task_name, per_class=per_class, seed=0))
    table = scan.table
    hashes = perceptual_hashes(np.stack([
        preprocess_image(decode_image(p), HASH_PREPROCESSING, HASH_RESOLUTION)
        for p in table["path"]]))
    rng = np.random.default_rng(1)
    found = total = 0
    for i in rng.choice(len(table), 25, replace=False):
        raw = decode_image(table["path"].iloc[i])
        copies = np.stack([preprocess_image(make(raw), HASH_PREPROCESSING, HASH_RESOLUTION)
                           for make in COPIES.values()])
        distance = hash_distance(perceptual_hashes(copies), hashes[i])
        found += int((distance <= MAX_DISTANCE).sum())
        total += len(COPIES)
    pairs = duplicate_pairs(table, hashes)
    label = dict(zip(table["path"], table["label"]))
    same = pairs[pairs["path_a"].map(label) == pairs["path_b"].map(label)]
    merged = len(set(same["path_a"]) | set(same["path_b"]))
    return {"task": task_name, "images": len(table), "recall": round(found / total, 3),
            "false_merged": merged, "false_merge_rate": round(merged / len(table), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=130)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-dup-") as tmp:
        rows = [measure(t, args.per_class, Path(tmp))
                for t in ("brain", "skin", "leukemia", "pneumonia")]
    print(f"256-bit dHash of the {HASH_RESOLUTION} px gray decode, threshold {MAX_DISTANCE} bits")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
