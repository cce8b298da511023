"""The multi-head data path: the `multihead_csv` reader, its phantom, targets, manifest, fingerprint.

Real CSVs and images in tmp folders, read by the real reader and `prepare_dataset`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from orchestrator.data.dataset import load_recorded, prepare_dataset
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import SIZE_MM, write_phantom
from orchestrator.data.splits import data_fingerprint, read_manifest
from orchestrator.data.table import COLUMNS, PHANTOM_MARKER
from orchestrator.data.targets import head_columns, heads_from_record, target_matrix
from orchestrator.errors import DataError
from tasks import get_task
from tasks.multihead import SHAPES, TEXTURES

QUIET = dict(log=lambda _: None)
TARGETS = ["target_shape", "target_texture", "target_size"]


def _csv(folder: Path, text: str, name: str = "labels.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _rows(n: int, bad: dict[int, str] | None = None) -> str:
    """`n` valid rows (shape, texture and size cycling), some replaced by `bad` lines."""
    lines = ["path,shape,texture,size"]
    for i in range(n):
        lines.append((bad or {}).get(i) or
                     f"img/{i:03d}.png,{SHAPES[i % 4]},{TEXTURES[i % 3]},{20 + i * 0.5:.2f}")
    return "\n".join(lines) + "\n"


# --- the reader, declared heads ----------------------------------------------------------------


def test_declared_heads_read_into_target_columns(tmp_path):
    _csv(tmp_path / "data", "path,Shape,texture,size,group,split,note\n"
                            "img/a.png,disc,smooth,20.50,p1,TRAIN,x\n"
                            "img/b.png,Square,dots,31,,test,y\n"
                            f"{tmp_path}/elsewhere/c.jpg,ring,stripes,59.99,p1,train,z\n")
    scan = read_layout(get_task("multihead"), tmp_path / "data")
    table = scan.table
    assert tuple(table.columns) == COLUMNS + tuple(TARGETS)
    assert table["path"].tolist() == [str(tmp_path / "data/img/a.png"),
                                      str(tmp_path / "data/img/b.png"),
                                      str(tmp_path / "elsewhere/c.jpg")]
    assert table["target_shape"].tolist() == ["disc", "square", "ring"]  # the head's spelling
    assert table["label"].tolist() == table["source_label"].tolist() == ["disc", "square", "ring"]
    assert table["target_texture"].tolist() == ["smooth", "dots", "stripes"]
    assert table["target_size"].tolist() == ["20.50", "31", "59.99"]  # as written
    assert table["group"].tolist() == ["p1", "img/b.png", "p1"]
    assert table["split"].tolist() == ["train", "test", "train"]
    assert scan.task is get_task("multihead") and not scan.skipped and not scan.synthetic
    assert scan.notes == ["columns of labels.csv that are no head of task multihead/default, "
                          "left alone: note"]
    # the CSV itself may be given, and finds the same rows
    direct = read_layout(get_task("multihead"), tmp_path / "data" / "labels.csv")
    pd.testing.assert_frame_equal(direct.table, table)


def test_a_missing_head_column_names_the_csv_the_column_and_the_columns_found(tmp_path):
    csv = _csv(tmp_path, "path,shape,size,group\nimg/a.png,disc,20,g\n")
    with pytest.raises(DataError) as err:
        read_layout(get_task("multihead"), tmp_path)
    text = str(err.value)
    assert str(csv) in text and "lacks column(s) texture" in text
    assert "columns found: path, shape, size, group" in text
    with pytest.raises(DataError, match="lacks the column path; columns found: file, shape"):
        read_layout(get_task("multihead"), _csv(tmp_path / "b", "file,shape\nx.png,disc\n"))
    (tmp_path / "c" / "img").mkdir(parents=True)
    with pytest.raises(DataError, match=r"expected labels\.csv under .*multi-head CSV layout"):
        read_layout(get_task("multihead"), tmp_path / "c")  # a folder without labels.csv


def test_bad_values_leave_their_rows_out_with_reasons(tmp_path):
    bad = {3: "img/003.png,blob,dots,30", 7: "img/007.png,disc,dots,n/a"}
    _csv(tmp_path, _rows(40, bad))
    scan = read_layout(get_task("multihead"), tmp_path)
    assert len(scan.table) == 38
    assert {Path(s.path).name: s.reason for s in scan.skipped} == {
        "003.png": "shape 'blob' is not one of disc, square, triangle, ring",
        "007.png": "size 'n/a' is not a finite number"}
    for text in ("", "inf", "nan"):
        _csv(tmp_path / text, _rows(40, {0: f"img/000.png,disc,dots,{text}"}))
        (skip,) = read_layout(get_task("multihead"), tmp_path / text).skipped
        assert skip.reason == ("size is empty" if not text else
                               f"size {text!r} is not a finite number")


def test_more_than_five_percent_bad_rows_are_refused_naming_lines(tmp_path):
    bad = {i: f"img/{i:03d}.png,disc,plaid,30" for i in (1, 2, 3)}  # 3 of 40: 7.5%
    csv = _csv(tmp_path, _rows(40, bad))
    with pytest.raises(DataError) as err:
        read_layout(get_task("multihead"), tmp_path)
    text = str(err.value)
    assert f"3 of 40 rows of {csv} (7.5%, more than 5%)" in text
    assert "line 3: texture 'plaid' is not one of smooth, stripes, dots" in text


def test_a_header_kind_must_match_the_declared_head(tmp_path):
    _csv(tmp_path, "path,shape,texture,size:classification\nimg/a.png,disc,dots,20\n")
    with pytest.raises(DataError, match="says classification, but task multihead/default's "
                                        "head size is a regression head"):
        read_layout(get_task("multihead"), tmp_path)
    _csv(tmp_path / "ok", "path,shape,texture,size:regression[mm]\nimg/a.png,disc,dots,20\n")
    assert read_layout(get_task("multihead"), tmp_path / "ok").table["target_size"][0] == "20"


# --- the reader, heads from the data ------------------------------------------------------------


def test_discovered_heads_from_annotations_and_values(tmp_path):
    lines = ["path,grade,volume:regression[ml],site,score,count,stage:classification"]
    for i in range(24):
        lines.append(f"img/{i:02d}.png,{i % 3 + 1},{i * 2},{('lung', 'liver')[i % 2]},"
                     f"{i % 4}.5,{i},{(1.5, 2.5)[i % 2]}")
    _csv(tmp_path, "\n".join(lines) + "\n")
    scan = read_layout(get_task("multihead/csv"), tmp_path)
    heads = {h.name: h for h in scan.task.heads}
    assert list(heads) == ["grade", "volume", "site", "score", "count", "stage"]
    assert heads["grade"].kind == "classification" and heads["grade"].classes == ("1", "2", "3")
    assert heads["volume"].kind == "regression" and heads["volume"].unit == "ml"
    assert heads["site"].classes == ("liver", "lung")
    assert heads["score"].kind == "regression"  # fractional values
    assert heads["count"].kind == "regression"  # integers, 24 distinct (> 20)
    assert heads["stage"].classes == ("1.5", "2.5")  # the header says so
    assert scan.task.classes == ("1", "2", "3") and scan.task.is_multihead
    assert scan.table["label"].tolist()[:4] == ["1", "2", "3", "1"]
    assert list(scan.table.columns[len(COLUMNS):]) == [f"target_{h}" for h in heads]
    assert scan.notes == ["heads from labels.csv: grade (classification, 3 classes), volume "
                          "(regression, ml), site (classification, 2 classes), score "
                          "(regression), count (regression), stage (classification, 2 classes)"]


def test_discovered_heads_refuse_what_cannot_be_a_head(tmp_path):
    cases = {
        "path,size\na.png,1.5\nb.png,2.5\n": "at least one classification head is needed",
        "path,grade:ordinal\na.png,1\n": "is not `name`, `name:classification`",
        "path,grade:classification[mm]\na.png,1\n": "only a regression head has a unit",
        "path,tumour grade\na.png,1\nb.png,2\n": "must be a plain identifier",
        "path,grade\na.png,1\nb.png,1\n": "holds 1 distinct value(s) ['1']",
        "path,grade,Grade:classification\na.png,1,1\n": "more than one column for head(s)",
        "path,group,split\na.png,g,\n": "has no head column",
    }
    for i, (text, message) in enumerate(cases.items()):
        _csv(tmp_path / str(i), text)
        with pytest.raises(DataError, match=re.escape(message)):
            read_layout(get_task("multihead/csv"), tmp_path / str(i))


# --- the phantom --------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_phantom_is_deterministic_by_seed(tmp_path):
    task = get_task("multihead")
    first = _files(write_phantom(task, tmp_path / "a", per_class=6, seed=2, size=48))
    again = _files(write_phantom(task, tmp_path / "b", per_class=6, seed=2, size=48))
    other = _files(write_phantom(task, tmp_path / "c", per_class=6, seed=3, size=48))
    assert first == again
    assert first["labels.csv"] != other["labels.csv"]
    images = {k: v for k, v in first.items() if k.endswith(".jpg")}
    assert len(images) == 24 and not set(images.values()) & set(other.values())


def test_phantom_layout_balance_and_targets(tmp_path):
    root = write_phantom(get_task("multihead"), tmp_path / "p", per_class=30, seed=0, size=64)
    assert sorted(p.name for p in root.iterdir()) == [PHANTOM_MARKER, "images", "labels.csv"]
    frame = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["path", "shape", "texture", "size", "group"]
    assert all(re.fullmatch(r"images/\d{5}\.jpg", p) for p in frame["path"])
    assert all((root / p).is_file() for p in frame["path"])
    image = cv2.imread(str(root / frame["path"][0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64, 3)
    assert frame["shape"].value_counts().to_dict() == {s: 30 for s in SHAPES}
    textures = frame["texture"].value_counts()
    assert set(textures.index) == set(TEXTURES) and textures.min() >= 25  # 120 / 3 = 40 each
    per_shape = pd.crosstab(frame["shape"], frame["texture"])
    assert (per_shape.to_numpy() >= 5).all()  # every texture with every shape
    assert all(re.fullmatch(r"\d{2}\.\d{2}", v) for v in frame["size"])
    size = frame["size"].astype(float)
    assert SIZE_MM[0] <= size.min() and size.max() <= SIZE_MM[1] and size.std() > 8
    assert size.nunique() > 50  # continuous
    # a group is one object (1-2 images): its images share every target
    by_group = frame.groupby("group")
    assert by_group.size().between(1, 2).all() and (by_group.size() == 2).any()
    assert (by_group[["shape", "texture", "size"]].nunique() == 1).all().all()
    # size does not tell the shape: every shape spans most of the range
    spans = size.groupby(frame["shape"]).agg(["min", "max"])
    assert (spans["min"] < 30).all() and (spans["max"] > 50).all()


def test_phantom_reads_through_both_variants(tmp_path):
    root = write_phantom(get_task("multihead"), tmp_path / "p", per_class=6, seed=0, size=40)
    declared = read_layout(get_task("multihead"), root)
    assert declared.synthetic and len(declared.table) == 24 and not declared.skipped
    assert declared.table["split"].eq("").all() and declared.table["group"].str.match("obj").all()
    found = read_layout(get_task("multihead/csv"), root)
    assert [(h.name, h.kind) for h in found.task.heads] == [
        ("shape", "classification"), ("texture", "classification"), ("size", "regression")]
    assert found.task.classes == tuple(sorted(SHAPES))
    pd.testing.assert_frame_equal(found.table, declared.table)


# --- targets, the pipeline, the manifest, the fingerprint ---------------------------------------


def test_target_matrix_indices_values_and_errors():
    task = get_task("multihead")
    table = pd.DataFrame({"target_shape": ["ring", "disc"], "target_texture": ["dots", "smooth"],
                          "target_size": ["20.50", "60"], "label": ["ring", "disc"]})
    y = target_matrix(table, task)
    assert y.dtype == np.float64 and y.shape == (2, 3)
    np.testing.assert_array_equal(y, [[3, 2, 20.5], [0, 0, 60.0]])
    assert head_columns(task) == TARGETS
    assert target_matrix(table.iloc[0:0], task).shape == (0, 3)
    with pytest.raises(DataError, match="'blob' is not one of disc"):
        target_matrix(table.assign(target_shape=["blob", "disc"]), task)
    with pytest.raises(DataError, match="no column target_size"):
        target_matrix(table.drop(columns="target_size"), task)
    with pytest.raises(ValueError, match="has no heads"):
        target_matrix(table, get_task("brain"))


def test_prepare_and_load_recorded_round_trip_declared_heads():
    task = get_task("multihead")
    data = prepare_dataset(task, None, 32, phantom_per_class=8, **QUIET)
    assert data.synthetic and data.task == task
    assert list(data.table.columns[len(COLUMNS):len(COLUMNS) + 3]) == TARGETS
    for split in ("train", "val", "test"):
        x, y = data.arrays(split)
        assert x.shape[1:] == (32, 32, 3) and y.dtype == np.float64 and y.shape == (len(x), 3)
        np.testing.assert_array_equal(y, data.labels(split))
        np.testing.assert_array_equal(y[:, 0], [task.class_index(c) for c in
                                                data.table.loc[data.table["split"] == split,
                                                               "label"]])
    rows = data.table.iloc[[5, 1]]
    x, y = data.rows_arrays(rows)
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 3)
    np.testing.assert_array_equal(y, target_matrix(rows, task))
    _, train = data.arrays("train")
    assert set(np.unique(train[:, 1])) == {0, 1, 2} and np.ptp(train[:, 2]) > 20  # targets vary

    manifest, meta = read_manifest(data.manifest_path)
    assert list(manifest.columns[len(COLUMNS):len(COLUMNS) + 3]) == TARGETS
    assert heads_from_record(meta["heads"]) == task.heads
    again = load_recorded(task, data.manifest_path, 32, **QUIET)
    assert again.task == task and again.fingerprint == data.fingerprint
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(again.labels(split), data.labels(split))


def test_prepare_and_load_recorded_round_trip_discovered_heads(tmp_path):
    lines = ["path,grade,volume:regression[ml]"]
    for i in range(36):
        image = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        (tmp_path / "img").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "img" / f"{i:02d}.png"), image)
        lines.append(f"img/{i:02d}.png,{('low', 'mid', 'high')[i % 3]},{10 + i * 0.25}")
    _csv(tmp_path, "\n".join(lines) + "\n")
    placeholder = get_task("multihead/csv")
    data = prepare_dataset(placeholder, tmp_path, 32, manifest_dir=tmp_path / "m", **QUIET)
    assert [h.name for h in data.task.heads] == ["grade", "volume"]
    assert data.task.classes == ("high", "low", "mid")
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["heads"] == \
        data.task.summary()["heads"]
    again = load_recorded(placeholder, tmp_path / "m", 32, **QUIET)
    assert again.task == data.task and again.task.head("volume").unit == "ml"
    pd.testing.assert_frame_equal(again.table[["target_grade", "target_volume"]],
                                  data.table[["target_grade", "target_volume"]])
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(again.labels(split), data.labels(split))
    # a declared task refuses a manifest recorded with other heads
    with pytest.raises(DataError, match="declares others now"):
        load_recorded(get_task("multihead"), tmp_path / "m", 32, **QUIET)


def test_a_changed_target_changes_the_fingerprint(tmp_path):
    task = get_task("multihead")
    root = write_phantom(task, tmp_path / "p", per_class=8, seed=0, size=40)
    base = prepare_dataset(task, root, 32, **QUIET).fingerprint
    frame = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    for column, value in (("texture", None), ("size", "33.33")):
        changed = frame.copy()
        if value is None:
            value = TEXTURES[(TEXTURES.index(frame.at[0, column]) + 1) % 3]
        changed.at[0, column] = value
        changed.to_csv(root / "labels.csv", index=False)
        assert prepare_dataset(task, root, 32, **QUIET).fingerprint != base, column
    frame.to_csv(root / "labels.csv", index=False)
    assert prepare_dataset(task, root, 32, **QUIET).fingerprint == base
    # the same files read as `multihead/csv` train other class indices: another fingerprint
    assert prepare_dataset(get_task("multihead/csv"), root, 32, **QUIET).fingerprint != base


def test_single_head_fingerprints_are_unchanged():
    """A table without target columns hashes exactly as before the multi-head columns."""
    table = pd.DataFrame({"path": ["/a", "/b"], "label": ["x", "y"], "source_label": ["x", "y"],
                          "group": ["g1", "g2"], "split": ["train", "test"]})
    h = hashlib.blake2b(b"content", digest_size=16)
    for row in (("x", "g1", "train"), ("y", "g2", "test")):
        h.update("\x1f".join(row).encode() + b"\n")
    assert data_fingerprint(table, "content") == h.hexdigest()
    assert data_fingerprint(table, "content", get_task("brain")) == h.hexdigest()
    targets = table.assign(target_shape=["disc", "ring"])
    assert data_fingerprint(targets, "content") != h.hexdigest()
