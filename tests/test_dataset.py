"""prepare_dataset: the whole path from a folder to split arrays, on real phantom files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.data.dataset import load_recorded, prepare_dataset
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.splits import read_manifest
from orchestrator.errors import ConfigError, DataError
from tasks import TASKS, get_task

ALL = [f"{name}/{variant}" for name, variants in TASKS.items() for variant in variants]
QUIET = dict(log=lambda _: None)


@pytest.mark.parametrize("key", ALL)
def test_every_task_phantom_prepares_into_split_arrays(key):
    task = get_task(key)
    data = prepare_dataset(task, None, 32, phantom_per_class=12, **QUIET)
    assert data.synthetic
    for split in ("train", "val", "test"):
        x, y = data.arrays(split)
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and len(x) == len(y) > 0
        labels = y[:, 0] if data.task.is_multihead else y  # the phantom's first head: shape
        assert labels.min() >= 0 and labels.max() < data.task.num_classes
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
    # the first call decodes twice (the hashing size, 32 px); the re-split decodes nothing
    assert sum("decoded" in line for line in logs) == 2


def test_two_and_a_half_percent_broken_files_run_listed_and_out_before_splitting(tmp_path):
    """4 broken of 160 (2.5%): the run goes on, the files are named and in unreadable.csv."""
    task = get_task("leukemia")
    root = write_phantom(task, tmp_path / "leuk", per_class=40, seed=0)
    victims = [sorted((root / "Original" / c).glob("*.jpg"))[i]
               for c, i in (("Pro", 0), ("Pro", 1), ("Benign", 0), ("Early", 3))]
    for victim in victims:
        victim.write_bytes(b"not a jpeg")
    logs: list[str] = []
    data = prepare_dataset(task, root, 32, log=logs.append)
    assert not set(map(str, victims)) & set(data.table["path"])
    (line,) = [ln for ln in logs if ln.startswith("warning: 4 of 160 images left out")]
    assert all(v.name in line for v in victims[:4])
    listed = pd.read_csv(data.manifest_path.parent / "unreadable.csv")
    assert sorted(listed["path"]) == sorted(v.relative_to(root).as_posix() for v in victims)
    assert set(listed["reason"]) == {"unreadable"}


def test_many_unreadable_images_abort_naming_the_class_and_files(tmp_path):
    task = get_task("leukemia")
    root = write_phantom(task, tmp_path / "leuk", per_class=10, seed=0)
    broken = sorted((root / "Original" / "Early").glob("*.jpg"))
    for path in broken:
        path.write_bytes(b"")
    with pytest.raises(DataError, match="class Early") as err:
        prepare_dataset(task, root, 32, **QUIET)
    assert broken[0].relative_to(root).as_posix() in str(err.value)


def test_copies_across_training_and_testing_are_dropped_from_training_by_default(tmp_path):
    task = get_task("brain/4class")
    root = write_phantom(task, tmp_path / "brain", per_class=10, seed=0)
    train_img = sorted((root / "Training" / "glioma").glob("*.jpg"))[0]
    copy = root / "Testing" / "glioma" / "Te-gl_copy.jpg"
    shutil.copy(train_img, copy)
    data = prepare_dataset(task, root, 32, **QUIET)
    pair = data.duplicates[(data.duplicates["path_a"] == str(train_img))
                           & (data.duplicates["path_b"] == str(copy))]
    assert pair[["final_split_a", "final_split_b"]].values.tolist() == [["dropped", "test"]]
    assert str(copy) in set(data.table["path"])  # the official test split stays as published
    assert str(train_img) not in set(data.table["path"])
    assert data.leaking_pairs.empty
    recorded = pd.read_csv(data.manifest_path.parent / "duplicates.csv")
    assert len(recorded) == len(data.duplicates) >= 1

    kept = prepare_dataset(task, root, 32, keep_duplicates=True, **QUIET)
    assert {str(copy), str(train_img)} <= set(kept.table["path"])
    assert len(kept.leaking_pairs) >= 1


def test_the_split_does_not_depend_on_the_trial_resolution(tmp_path):
    task = get_task("skin")
    root = write_phantom(task, tmp_path / "skin", per_class=12, seed=2)
    a, b = (prepare_dataset(task, root, r, **QUIET) for r in (32, 48))
    assert a.fingerprint == b.fingerprint
    pd.testing.assert_frame_equal(a.table, b.table)


def test_positive_class_for_your_own_folders(tmp_path):
    task = get_task("folder")
    data = prepare_dataset(task, None, 32, phantom_per_class=12, **QUIET)
    classes = data.task.classes
    chosen = prepare_dataset(task, None, 32, phantom_per_class=8, positive_class=classes[0],
                             **QUIET)
    assert chosen.task.positive_class == classes[0] and chosen.task.positive_index == 0
    with pytest.raises(ConfigError, match="its classes: " + ", ".join(classes)):
        prepare_dataset(task, None, 32, phantom_per_class=8, positive_class="nope", **QUIET)
    with pytest.raises(ConfigError, match="defines its own positive class"):
        prepare_dataset(get_task("skin"), None, 32, phantom_per_class=8, positive_class="benign",
                        **QUIET)


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        prepare_dataset(get_task("brain"), tmp_path / "nowhere", 32, **QUIET)


def test_the_recorded_split_is_reloaded_as_it_was_and_a_changed_file_is_refused(tmp_path):
    task = get_task("brain/4class")
    root = write_phantom(task, tmp_path / "brain", per_class=10, seed=0)
    original = prepare_dataset(task, root, 32, split_seed=3, manifest_dir=tmp_path / "m",
                               **QUIET)
    recorded = load_recorded(task, original.manifest_path, 48, **QUIET)
    assert recorded.fingerprint == original.fingerprint and recorded.resolution == 48
    pd.testing.assert_frame_equal(recorded.table.drop(columns="row"),
                                  original.table.drop(columns="row"))
    for split in ("train", "val", "test"):
        assert recorded.arrays(split)[0].shape[0] == len(original.paths(split))
    # the data mounted elsewhere: the same files under another root still match
    moved = shutil.copytree(root, tmp_path / "moved")
    again = load_recorded(task, original.manifest_path, 32, data_dir=moved, **QUIET)
    assert again.paths("test")[0].startswith(str(moved))

    victim = Path(original.paths("val")[0])
    victim.write_bytes(victim.read_bytes()[:-40] + b"\0" * 40)  # same name, other bytes
    with pytest.raises(DataError, match="the data changed since the sweep recorded it") as err:
        load_recorded(task, original.manifest_path, 32, **QUIET)
    assert victim.relative_to(root).as_posix() in str(err.value)
    victim.unlink()
    with pytest.raises(DataError, match="1 file\\(s\\) are missing or hold other bytes"):
        load_recorded(task, original.manifest_path, 32, **QUIET)


def test_a_manifest_without_content_hashes_is_refused(tmp_path):
    task = get_task("brain")
    data = prepare_dataset(task, None, 32, phantom_per_class=8, manifest_dir=tmp_path, **QUIET)
    old = pd.read_csv(data.manifest_path, dtype=str).drop(columns="hash")
    old.to_csv(data.manifest_path, index=False)
    with pytest.raises(DataError, match="records no content hashes"):
        load_recorded(task, data.manifest_path, 32, **QUIET)


def test_reloading_the_recorded_split_reuses_the_decode_even_when_files_were_left_out(tmp_path):
    """The trial-size decode holds only the kept images, keyed by their content: the reload
    (ensemble, resume) finds it instead of decoding the data set again."""
    task = get_task("brain/4class")
    root = write_phantom(task, tmp_path / "brain", per_class=30, seed=0)
    sorted((root / "Training" / "glioma").glob("*.jpg"))[0].write_bytes(b"not an image")
    original = prepare_dataset(task, root, 32, manifest_dir=tmp_path / "m", **QUIET)
    logs: list[str] = []
    again = load_recorded(task, original.manifest_path, 32, log=logs.append)
    assert any(line.startswith("cache hit") for line in logs), logs
    assert not any("decoded" in line for line in logs)
    assert np.array_equal(again.arrays("val")[0], original.arrays("val")[0])


def test_a_folder_of_real_alike_distinct_images_prepares_with_no_giant_group(tmp_path):
    """1,000 real handwritten digits (scikit-learn's), alike within each class and without
    copies, in a user's own folder layout: almost no copy groups, and the realised split and
    folds hold their asked shares (the hash alone once sent a 74% group whole to test)."""
    from orchestrator.data.split_checks import MIN_TRAIN_PER_CLASS, SHARE_TOLERANCE
    from tests.real_images import write_digits_folder

    root = write_digits_folder(tmp_path / "digits", per_class=100)
    data = prepare_dataset(get_task("folder"), root, 32, cv_folds=3, **QUIET)
    assert len(data.table) == 1000
    assert data.table.groupby("group").size().max() <= 2
    shares = data.table["split"].value_counts(normalize=True)
    task = data.task
    assert abs(shares["test"] - task.split.test_fraction) <= SHARE_TOLERANCE
    counts = data.counts()
    assert (counts.loc["train"] >= MIN_TRAIN_PER_CLASS).all() and (counts.loc["test"] > 0).all()
    assert data.table.loc[data.table["split"] == "test", "group"].nunique() >= 20
