"""Integrity: per-split expected/found/lost, a clear refusal when a split lost too many."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from orchestrator.data.cache import load_or_build
from orchestrator.data.integrity import check_integrity
from orchestrator.data.splits import content_fingerprint
from orchestrator.data.table import make_table
from orchestrator.errors import DataError
from tasks.base import Preprocessing


def build(tmp_path: Path, layout: dict[str, list[str]], missing=(), corrupt=()):
    """Write real images for `layout` (split -> relative names); then break some on disk."""
    root = tmp_path / "data"
    rows = []
    for split, names in layout.items():
        for i, name in enumerate(names):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((12, 12, 3), i % 250, np.uint8))
            rows.append({"path": str(path), "label": "a", "source_label": "a", "group": name,
                         "split": split})
    for name in missing:
        (root / name).unlink()
    for name in corrupt:
        (root / name).write_bytes(b"truncated")
    table = make_table(rows)
    paths = table["path"].tolist()
    cached = load_or_build(paths, Preprocessing(), 8, content_fingerprint(paths),
                           root=tmp_path / "cache", log=lambda _: None)
    return table, cached.ok, root


def names(prefix, n):
    return [f"{prefix}/{i:03d}.png" for i in range(n)]


def test_clean_data_reports_every_split(tmp_path):
    table, ok, root = build(tmp_path, {"train": names("tr", 30), "val": names("va", 10),
                                       "test": names("te", 10)})
    report = check_integrity(table, ok, root)
    assert [s.split for s in report.splits] == ["train", "val", "test"]
    assert [(s.expected, s.found, s.lost) for s in report.splits] == [(30, 30, 0), (10, 10, 0),
                                                                      (10, 10, 0)]
    assert report.warnings() == []
    assert report.lines()[0].split() == ["split", "expected", "found", "lost"]
    assert report.lines()[2].split() == ["val", "10", "10", "0"]


def test_a_few_lost_images_are_listed_by_name(tmp_path):
    train = names("train", 60)
    table, ok, root = build(tmp_path, {"train": train, "val": names("val", 20)},
                            missing=[train[3]], corrupt=[train[7], train[9]])
    report = check_integrity(table, ok, root)
    split = report.splits[0]
    assert (split.expected, split.found, split.lost) == (60, 59, 3)
    assert split.missing == (train[3],) and split.unreadable == (train[7], train[9])
    [warning] = report.warnings()
    assert warning.startswith("train: 3 of 60 images lost")
    assert train[3] in warning and train[9] in warning
    assert report.lines()[1].split() == ["train", "60", "59", "3"]


def test_a_split_that_lost_too_many_is_refused_with_its_folder(tmp_path):
    val = names("HAM10000_images_part_2", 33) + names("HAM10000_images_part_1", 7)
    lost = val[:7]  # 17.5% of val, all under part_2
    table, ok, root = build(tmp_path, {"train": names("HAM10000_images_part_1x", 100),
                                       "val": val}, missing=lost)
    with pytest.raises(DataError) as err:
        check_integrity(table, ok, root)
    message = str(err.value)
    assert "val: 7 of 40 images (17.5%) missing or unreadable" in message
    assert f"mostly under {root / 'HAM10000_images_part_2'};" in message
    assert "mounted" in message and "train" not in message


def test_unreadable_files_get_a_different_hint(tmp_path):
    test = names("te", 10)
    table, ok, root = build(tmp_path, {"test": test}, corrupt=test[:2])
    with pytest.raises(DataError, match=r"test: 2 of 10 images \(20.0%\).*whole images"):
        check_integrity(table, ok, root)


def test_threshold_is_a_parameter(tmp_path):
    test = names("te", 10)
    table, ok, root = build(tmp_path, {"test": test}, missing=test[:2])
    report = check_integrity(table, ok, root, max_bad_fraction=0.25)
    assert report.splits[0].lost == 2


def test_ok_must_match_the_table(tmp_path):
    table, ok, root = build(tmp_path, {"train": names("tr", 3)})
    with pytest.raises(ValueError, match="3 rows"):
        check_integrity(table, ok[:2], root)
