"""Splits: stratified, group-aware, seeded; given splits kept; fingerprints; the manifest."""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.data.split_checks import MIN_TRAIN_PER_CLASS, SHARE_TOLERANCE
from orchestrator.data.splits import (SplitWarning,
                                      assign_folds, assign_splits,
                                      check_group_leaks,
                                      content_fingerprint, data_fingerprint, read_manifest,
                                      write_manifest)
from orchestrator.data.table import make_table
from orchestrator.errors import DataError
from tasks import get_task
from tasks.base import SplitPolicy

TASK = get_task("skin")
QUIET = pytest.mark.filterwarnings("ignore::orchestrator.data.splits.SplitWarning")


def table_of(labels, groups=None, splits=None, root="/data"):
    n = len(labels)
    groups = groups if groups is not None else [f"img{i:05d}.jpg" for i in range(n)]
    splits = splits if splits is not None else [""] * n
    return make_table([
        {"path": f"{root}/img{i:05d}.jpg", "label": lab, "source_label": lab, "group": g,
         "split": s}
        for i, (lab, g, s) in enumerate(zip(labels, groups, splits))
    ])


def shares(table):
    return table["split"].value_counts(normalize=True)


def test_three_way_split_follows_policy_and_stratifies():
    labels = ["benign"] * 800 + ["malignant"] * 200
    out = assign_splits(table_of(labels), TASK, seed=0)
    assert set(out["split"]) == {"train", "val", "test"}
    assert shares(out).to_dict() == pytest.approx({"train": 0.70, "val": 0.15, "test": 0.15},
                                                  abs=0.005)
    by_split = pd.crosstab(out["split"], out["label"], normalize="index")["malignant"]
    assert by_split.to_numpy() == pytest.approx([0.2, 0.2, 0.2], abs=0.01)


def test_official_test_is_kept_and_val_comes_from_the_rest():
    labels = ["NORMAL", "PNEUMONIA"] * 300
    splits = ["test"] * 100 + [""] * 500
    out = assign_splits(table_of(labels, splits=splits), TASK, seed=3)
    assert (out["split"].iloc[:100] == "test").all()
    rest = out.iloc[100:]
    assert set(rest["split"]) == {"train", "val"}
    assert (rest["split"] == "val").mean() == pytest.approx(0.15, abs=0.005)


def test_given_train_and_val_are_kept():
    labels = ["a", "b"] * 50
    splits = ["train"] * 40 + ["val"] * 10 + [""] * 50
    out = assign_splits(table_of(labels, splits=splits), TASK, seed=0)
    assert (out["split"].iloc[:40] == "train").all()
    assert (out["split"].iloc[40:50] == "val").all()
    assert (out["split"].iloc[50:] != "").all()


def test_grouped_split_never_straddles_and_stays_close_to_policy():
    rng = np.random.default_rng(1)
    labels, groups = [], []
    for g in range(600):
        label = "malignant" if rng.random() < 0.25 else "benign"
        for _ in range(rng.integers(1, 5)):
            labels.append(label)
            groups.append(f"lesion{g}")
    out = assign_splits(table_of(labels, groups), TASK, seed=7)
    assert out.groupby("group")["split"].nunique().max() == 1
    assert shares(out)["test"] == pytest.approx(0.15, abs=0.02)
    assert shares(out)["val"] == pytest.approx(0.15, abs=0.02)


def test_singleton_groups_give_a_plain_stratified_split():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    out = assign_splits(table_of(labels), replace(TASK, split=SplitPolicy(0.2, 0.2)), seed=0)
    counts = pd.crosstab(out["split"], out["label"])
    assert counts.loc["test"].to_dict() == {"a": 12, "b": 6, "c": 2}
    assert counts.loc["val"].to_dict() == {"a": 12, "b": 6, "c": 2}


def test_seed_determines_the_split():
    table = table_of(["a", "b"] * 100)
    first = assign_splits(table, TASK, seed=11)["split"]
    assert first.equals(assign_splits(table, TASK, seed=11)["split"])
    assert not first.equals(assign_splits(table, TASK, seed=12)["split"])


def test_input_table_is_not_modified():
    table = table_of(["a", "b"] * 20)
    assign_splits(table, TASK, seed=0)
    assert (table["split"] == "").all()


def test_invalid_split_value_is_named():
    table = table_of(["a", "b"] * 10, splits=["training"] + [""] * 19)
    with pytest.raises(DataError, match="training"):
        assign_splits(table, TASK, seed=0)


def test_given_splits_that_leak_a_group_are_refused():
    table = table_of(["a"] * 4, groups=["p1", "p1", "p2", "p2"],
                     splits=["train", "test", "train", "train"])
    with pytest.raises(DataError, match=r"'p1' in test, train"):
        check_group_leaks(table)
    with pytest.raises(DataError, match="p1"):
        assign_splits(table, TASK, seed=0)


def test_undecided_images_join_their_groups_given_split():
    labels = ["a", "b"] * 50
    groups = ["patient0"] * 4 + [f"g{i}" for i in range(96)]
    splits = ["test", "", "", ""] + [""] * 96
    with pytest.warns(SplitWarning, match="3 image"):
        out = assign_splits(table_of(labels, groups, splits), TASK, seed=0)
    assert (out["split"].iloc[:4] == "test").all()


def test_too_little_data_for_a_val_split_is_a_clear_error():
    with pytest.raises(DataError, match="too few"):
        assign_splits(table_of(["a", "b"]), TASK, seed=0)
    with pytest.raises(DataError, match="too few"):  # one group cannot be split at all
        assign_splits(table_of(["a"] * 30, groups=["p"] * 30), TASK, seed=0)


def test_a_class_missing_from_a_given_split_is_a_warning():
    labels = ["a"] * 40 + ["rare"] * 6
    splits = ["train"] * 30 + ["val"] * 5 + ["test"] * 5 + ["train"] * 6
    with pytest.warns(SplitWarning, match="rare"):
        out = assign_splits(table_of(labels, splits=splits), TASK, seed=0)
    assert (out["split"] != "").all()


def test_a_class_with_too_few_training_images_is_refused():
    with pytest.raises(DataError, match=r"too few images of class\(es\) 'rare' 1 \(at least "
                       rf"{MIN_TRAIN_PER_CLASS} each"):
        assign_splits(table_of(["a"] * 40 + ["rare"]), TASK, seed=0)


def test_a_split_pulled_off_its_share_by_one_large_group_is_refused():
    """One group of 74% of the images (alike images chained into one 'copy' group) goes whole
    to one split: refused, naming the group, instead of training on what is left."""
    labels = [str(i % 10) for i in range(1000)]
    groups = ["big"] * 740 + [f"g{i}" for i in range(260)]
    with pytest.raises(DataError) as err:
        assign_splits(table_of(labels, groups), TASK, seed=0)
    text = str(err.value)
    assert "came out with" in text and "group 'big' has 740 image(s) (74.0%)" in text
    fine = assign_splits(table_of(labels, [f"g{i // 2}" for i in range(1000)]), TASK, seed=0)
    shares = fine["split"].value_counts(normalize=True)
    assert abs(shares["test"] - TASK.split.test_fraction) <= SHARE_TOLERANCE


def test_a_fold_pulled_off_its_share_is_refused():
    labels = [str(i % 4) for i in range(400)]
    groups = ["big"] * 150 + [f"g{i}" for i in range(250)]
    table = table_of(labels, groups, ["train"] * 150 + [""] * 250)
    out = assign_splits(table, TASK, seed=0)
    with pytest.raises(DataError, match="fold '.' came out with"):
        assign_folds(out, 3, 0)


@QUIET
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 4), min_size=30, max_size=150),
    n_classes=st.integers(2, 4),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_groups_never_straddle_and_every_row_is_assigned(sizes, n_classes, data, seed):
    labels = data.draw(st.lists(st.sampled_from("abcd"[:n_classes]), min_size=len(sizes),
                                max_size=len(sizes)))
    group_labels = [lab for lab, size in zip(labels, sizes) for _ in range(size)]
    groups = [f"g{i}" for i, size in enumerate(sizes) for _ in range(size)]
    table = table_of(group_labels, groups)
    try:
        out = assign_splits(table, TASK, seed)
    except DataError as err:  # refused (too few of a class, a share missed): never a leak
        assert "too few" in str(err) or "came out with" in str(err)
        return
    again = assign_splits(table, TASK, seed)
    assert out["split"].isin(["train", "val", "test"]).all()
    assert out.groupby("group")["split"].nunique().max() == 1
    assert out["split"].equals(again["split"])


@QUIET
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 4), min_size=30, max_size=120),
    folds=st.integers(2, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_folds_hold_whole_groups_and_every_non_test_row_once(sizes, folds, seed):
    labels = ["abc"[i % 3] for i, size in enumerate(sizes) for _ in range(size)]
    groups = [f"g{i}" for i, size in enumerate(sizes) for _ in range(size)]
    try:
        out = assign_folds(assign_splits(table_of(labels, groups), TASK, seed), folds, seed)
    except DataError as err:  # refused (too few of a class, a share missed): never a leak
        assert "too few" in str(err) or "came out with" in str(err)
        return
    pool = out[out["split"] != "test"]
    assert set(pool["fold"]) == {str(k) for k in range(folds)}  # each row exactly one fold
    assert (out.loc[out["split"] == "test", "fold"] == "").all()  # test never in a fold
    assert pool.groupby("group")["fold"].nunique().max() == 1  # groups never straddle folds
    again = assign_folds(assign_splits(table_of(labels, groups), TASK, seed), folds, seed)
    assert out["fold"].equals(again["fold"])


def test_more_folds_than_groups_or_class_members_is_a_clear_error():
    out = assign_splits(table_of(list("ab" * 20)), TASK, 0)
    with pytest.raises(DataError, match="cannot make 40 folds"):
        assign_folds(out, 40, 0)
    small = assign_splits(table_of(list("ab" * 20)), TASK, 0)
    largest = int(small.loc[small["split"] != "test", "label"].value_counts().max())
    with pytest.raises(DataError, match=f"the largest class outside the test split has "
                       f"{largest} image"):
        assign_folds(small, largest + 1, 0)
    assert (assign_folds(out, 0, 0)["fold"] == "").all()


@QUIET
@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.sampled_from("abc"), min_size=60, max_size=400),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_singleton_groups_keep_label_proportions(labels, seed):
    try:
        out = assign_splits(table_of(labels), TASK, seed)
    except DataError as err:  # a class too rare to train on
        assert "too few" in str(err)
        return
    whole = out["label"].value_counts(normalize=True)
    train = out.loc[out["split"] == "train", "label"].value_counts(normalize=True)
    # Stratification rounds each class by at most one image per held-out split.
    tolerance = 3 / (out["split"] == "train").sum()
    assert (train.reindex(whole.index, fill_value=0) - whole).abs().max() <= tolerance


def write_files(root, names, payload=b"x"):
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload + name.encode())
        paths.append(str(path))
    return paths


def test_content_fingerprint_follows_names_and_bytes_not_location(tmp_path):
    names = ["a/1.jpg", "a/2.jpg", "b/ü.jpg"]
    paths = write_files(tmp_path / "one", names)
    fp = content_fingerprint(paths)
    assert fp == content_fingerprint(paths)
    shutil.copytree(tmp_path / "one", tmp_path / "moved" / "two")
    assert fp == content_fingerprint([p.replace("/one/", "/moved/two/") for p in paths])
    (tmp_path / "one" / "a" / "2.jpg").write_bytes(b"changed")
    assert content_fingerprint(paths) != fp
    (tmp_path / "one" / "a" / "2.jpg").unlink()
    missing = content_fingerprint(paths)  # no exception: a missing file is a token
    assert missing not in (fp, content_fingerprint(paths[:1] + paths[2:]))


def test_data_fingerprint_changes_with_labels_groups_and_splits():
    table = assign_splits(table_of(["a", "b"] * 20), TASK, seed=0)
    fp = data_fingerprint(table, "content")
    assert fp == data_fingerprint(table.copy(), "content")
    assert fp != data_fingerprint(table, "other content")
    for column, value in (("split", "test"), ("label", "c"), ("group", "x")):
        changed = table.copy()
        changed.loc[0, column] = value if changed.loc[0, column] != value else "train"
        assert data_fingerprint(changed, "content") != fp


def test_manifest_round_trips(tmp_path):
    root = tmp_path / "data"
    paths = write_files(root, [f"{c}/{i}.jpg" for c in ("glioma", "notumor") for i in range(10)])
    table = make_table([{"path": p, "label": p.split("/")[-2], "source_label": p.split("/")[-2],
                         "group": p.split("/")[-1], "split": ""} for p in paths])
    table = assign_splits(table, replace(TASK, split=SplitPolicy(0.2, 0.2)), seed=0)
    csv = write_manifest(table, tmp_path / "out", root, "fp123", synthetic=True)
    assert csv.name == "manifest.csv"
    assert pd.read_csv(csv)["path"].iloc[0] == "glioma/0.jpg"
    back, meta = read_manifest(csv)
    pd.testing.assert_frame_equal(back, table)
    assert meta["fingerprint"] == "fp123" and meta["synthetic"] is True
    assert meta["root"] == str(root)
    assert meta["counts"]["test"] == {"glioma": 2, "notumor": 2}
    assert sum(n for split in meta["counts"].values() for n in split.values()) == 20
    assert read_manifest(tmp_path / "out")[1] == meta
