"""Memory the data need on a cluster: per data set and resolution, what the driver decodes and
every node that runs a trial holds in its object store.

    .venv/bin/python bench/data_memory.py [--phantom-per-class 40]

The arrays are uint8, N x R x R x 3 bytes. Trials get the train and validation splits (one copy
per node, in that node's object store, read zero-copy by every trial there); the driver also
holds the test split, which only the final ensemble reads. Image counts are the public data
sets' published sizes; the split follows each task's policy (official test split kept where
there is one). The figures are checked against the phantom, prepared for real here.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from orchestrator.data.dataset import prepare_dataset  # noqa: E402
from tasks import get_task  # noqa: E402

# (task, images in the public release, images in its official test split or None)
PUBLIC = (
    ("brain", 7023, 1311),  # Kaggle "Brain Tumor MRI Dataset" (Nickparvar): Training / Testing
    ("skin", 10015, None),  # HAM10000
    ("leukemia", 3242, None),  # Kaggle "Blood Cell Cancer [ALL]"
    ("pneumonia", 5856, 624),  # chest_xray (Kermany et al.): train + val / test
)
RESOLUTIONS = (64, 128, 224, 299, 384)
MIB = 2 ** 20


def split_counts(task_name: str, total: int, official_test: int | None) -> tuple[int, int, int]:
    """(train, val, test) images under the task's split fractions."""
    split = get_task(task_name).split
    test = official_test if official_test is not None else round(total * split.test_fraction)
    val = round((total - test) * split.val_fraction)
    return total - test - val, val, test


def nbytes(images: int, resolution: int) -> int:
    return images * resolution * resolution * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom-per-class", type=int, default=40)
    args = parser.parse_args()

    print("MiB per resolution: train+val (each node that runs trials) / test (driver only)")
    print(f"{'data set':<11} {'images':>7} {'train/val/test':>16} " +
          " ".join(f"{str(r) + ' px':>14}" for r in RESOLUTIONS))
    for name, total, official in PUBLIC:
        train, val, test = split_counts(name, total, official)
        cells = [f"{nbytes(train + val, r) / MIB:7.0f}/{nbytes(test, r) / MIB:<6.0f}"
                 for r in RESOLUTIONS]
        print(f"{name:<11} {total:>7} {f'{train}/{val}/{test}':>16} " + " ".join(
            f"{c:>14}" for c in cells))

    print()
    print("check on the brain phantom, prepared for real (64 px):")
    prepared = prepare_dataset(get_task("brain"), None, 64,
                               phantom_per_class=args.phantom_per_class, log=lambda _: None)
    for split in ("train", "val", "test"):
        x, _ = prepared.arrays(split)
        print(f"  {split:<5} {x.shape} {x.dtype}: {x.nbytes} bytes, formula "
              f"{nbytes(len(x), 64)} bytes")


if __name__ == "__main__":
    main()
