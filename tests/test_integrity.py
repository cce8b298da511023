"""Integrity before splitting: lost files listed by name, refused over 5% of the whole set or of
any class, never because a split happened to draw them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from orchestrator.data.cache import load_or_build
from orchestrator.data.integrity import check_integrity
from orchestrator.data.splits import content_fingerprint
from orchestrator.data.table import make_table
from orchestrator.errors import DataError
from tasks.base import Preprocessing


def build(tmp_path: Path, layout: dict[str, list[str]], missing=(), corrupt=(), split=""):
    """Write real images for `layout` (class -> relative names); then break some on disk."""
    root = tmp_path / "data"
    rows = []
    for label, files in layout.items():
        for i, name in enumerate(files):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((12, 12, 3), i % 250, np.uint8))
            rows.append({"path": str(path), "label": label, "source_label": label,
                         "group": name, "split": split})
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


def test_clean_data_reports_every_class(tmp_path):
    table, ok, root = build(tmp_path, {"a": names("a", 30), "b": names("b", 10)})
    report = check_integrity(table, ok, root)
    assert report.expected == 40 and report.lost.empty and report.summary() == ""
    assert report.lines()[0].split() == ["class", "expected", "lost"]
    assert report.lines()[1].split() == ["a", "30", "0"]
    assert report.lines()[-1].split() == ["total", "40", "0"]


def test_two_and_a_half_percent_broken_runs_with_every_file_listed(tmp_path):
    """4 of 163 (2.5%): a split of 18 could draw 1 of them (5.6%), which must not matter."""
    a, b = names("a", 100), names("b", 63)
    table, ok, root = build(tmp_path, {"a": a, "b": b}, missing=[a[3]],
                            corrupt=[a[7], b[1], b[2]])
    report = check_integrity(table, ok, root,
                             reasons={str(root / b[1]): "DICOM object without pixel data"})
    assert len(report.lost) == 4 and report.lost_fraction == pytest.approx(4 / 163)
    assert sorted(report.lost["path"]) == sorted([a[3], a[7], b[1], b[2]])
    assert dict(zip(report.lost["path"], report.lost["reason"]))[a[3]] == "missing"
    assert dict(zip(report.lost["path"], report.lost["reason"]))[b[1]] == "unreadable"
    assert report.summary().startswith("4 of 163 images left out before splitting "
                                       "(1 missing, 3 unreadable): ")
    csv = pd.read_csv(report.write_csv(tmp_path / "lost.csv"))
    assert list(csv.columns) == ["path", "label", "split", "reason", "detail"] and len(csv) == 4
    # the decoder's reason is kept beside the file, in the CSV and the printed line
    assert dict(zip(csv["path"], csv["detail"].fillna("")))[b[1]] == \
        "DICOM object without pixel data"
    assert f"{b[1]} (DICOM object without pixel data)" in report.summary()


def test_over_five_percent_of_the_whole_set_is_refused_listing_the_files(tmp_path):
    a = names("part_2", 40)
    table, ok, root = build(tmp_path, {"a": a, "b": names("part_1", 40)}, missing=a[:5])
    with pytest.raises(DataError) as err:
        check_integrity(table, ok, root, listing=tmp_path / "out" / "unreadable.csv")
    message = str(err.value)
    assert "the whole data set: 5 of 80 (6.2%)" in message and "class a: 5 of 40" in message
    assert all(name in message for name in a[:5]) and "mounted" in message
    assert str(tmp_path / "out" / "unreadable.csv") in message
    assert len(pd.read_csv(tmp_path / "out" / "unreadable.csv")) == 5


def test_one_class_over_five_percent_is_refused_even_when_the_whole_set_is_not(tmp_path):
    rare = names("rare", 10)
    table, ok, root = build(tmp_path, {"common": names("common", 200), "rare": rare},
                            corrupt=rare[:1])
    with pytest.raises(DataError, match=r"class rare: 1 of 10 \(10.0%\).*whole images") as err:
        check_integrity(table, ok, root)
    assert "the whole data set" not in str(err.value)


def test_threshold_is_a_parameter(tmp_path):
    files = names("x", 10)
    table, ok, root = build(tmp_path, {"x": files, "y": names("y", 10)}, missing=files[:2])
    assert len(check_integrity(table, ok, root, max_bad_fraction=0.25).lost) == 2


def test_ok_must_match_the_table(tmp_path):
    table, ok, root = build(tmp_path, {"a": names("tr", 3)})
    with pytest.raises(ValueError, match="3 rows"):
        check_integrity(table, ok[:2], root)
