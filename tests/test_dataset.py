"""prepare_dataset: the whole path from a folder to split arrays, on real phantom files."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.splits import read_manifest
from orchestrator.errors import DataError
from tasks import TASKS, get_task

ALL = [f"{name}/{variant}" for name, variants in TASKS.items() for variant in variants]
QUIET = dict(log=lambda _: None)


@pytest.mark.parametrize("key", ALL)
def test_every_task_phantom_prepares_into_split_arrays(key):
    task = get_task(key)
    data = prepare_dataset(task, None, 32, phantom_per_class=8, **QUIET)
    assert data.synthetic
    for split in ("train", "val", "test"):
        x, y = data.arrays(split)
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and len(x) == len(y) > 0
        assert y.min() >= 0 and y.max() < data.task.num_classes
    groups = data.table.groupby("group")["split"].nunique()
    assert (groups == 1).all()  # no group in two splits
    manifest, meta = read_manifest(data.manifest_path)
    assert meta["fingerprint"] == data.fingerprint and meta["synthetic"] is True
    assert len(manifest) == len(data.table)


def test_same_seed_same_manifest_other_seed_other_split_same_cache(tmp_path):
    task = get_task("skin")
    root = write_phantom(task, tmp_path / "skin", per_class=8, seed=1)
    logs: list[str] = []
    a = prepare_dataset(task, root, 32, split_seed=0, log=logs.append)
    b = prepare_dataset(task, root, 32, split_seed=0, log=logs.append)
    c = prepare_dataset(task, root, 32, split_seed=5, log=logs.append)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not a.table["split"].equals(c.table["split"])
    assert sum("decoded" in line for line in logs) == 1  # the re-split decoded nothing


def test_a_few_unreadable_images_warn_and_are_left_out(tmp_path):
    task = get_task("leukemia")
    root = write_phantom(task, tmp_path / "leuk", per_class=60, seed=0)
    victim = sorted((root / "Original" / "Pro").glob("*.jpg"))[0]
    victim.write_bytes(b"not a jpeg")
    logs: list[str] = []
    data = prepare_dataset(task, root, 32, log=logs.append)
    assert str(victim) not in set(data.table["path"])
    assert any(victim.name in line for line in logs if line.startswith("warning"))


def test_many_unreadable_images_abort_naming_the_folder(tmp_path):
    task = get_task("leukemia")
    root = write_phantom(task, tmp_path / "leuk", per_class=10, seed=0)
    for path in (root / "Original" / "Early").glob("*.jpg"):
        path.write_bytes(b"")
    with pytest.raises(DataError, match="Early"):
        prepare_dataset(task, root, 32, **QUIET)


def test_cross_split_duplicates_are_reported_and_dropped_from_the_later_split(tmp_path):
    task = get_task("brain/4class")
    root = write_phantom(task, tmp_path / "brain", per_class=10, seed=0)
    train_img = sorted((root / "Training" / "glioma").glob("*.jpg"))[0]
    copy = root / "Testing" / "glioma" / "Te-gl_copy.jpg"
    shutil.copy(train_img, copy)
    kept = prepare_dataset(task, root, 32, **QUIET)
    pairs = kept.duplicates
    assert ((pairs["path_a"] == str(train_img)) & (pairs["path_b"] == str(copy))).any()
    assert str(copy) in set(kept.table["path"])
    dropped = prepare_dataset(task, root, 32, drop_duplicates=True, **QUIET)
    assert str(copy) not in set(dropped.table["path"])
    assert str(train_img) in set(dropped.table["path"])


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        prepare_dataset(get_task("brain"), tmp_path / "nowhere", 32, **QUIET)
