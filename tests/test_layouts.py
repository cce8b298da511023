"""Readers on untidy real-world layouts: what is used, what is skipped and why, what is an error."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from orchestrator.data.layouts import LAYOUTS, read_layout
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.readers.blood_cell_all import patient_group
from orchestrator.data.readers.chest_xray import patient_id
from orchestrator.errors import ConfigError, DataError
from tasks import get_task

N = 4  # images per source class in these phantoms


def phantom(name: str, path: Path) -> Path:
    return write_phantom(get_task(name), path, per_class=N, size=32)


def reasons(scan) -> dict[str, str]:
    return {s.path: s.reason for s in scan.skipped}


def per_label(scan) -> dict[str, int]:
    return scan.table["label"].value_counts().to_dict()


def test_registry_covers_every_task_layout():
    from tasks import TASKS
    assert {t.layout for v in TASKS.values() for t in v.values()} == set(LAYOUTS)
    with pytest.raises(ConfigError, match="unknown layout 'nope'"):
        read_layout(replace(get_task("brain"), layout="nope"), ".")


def test_brain_tolerates_what_real_downloads_contain(tmp_path):
    root = phantom("brain/4class", tmp_path / "download" / "archive")
    glioma = root / "Training" / "glioma"
    shutil.copytree(root / "Training", root / "old" / "Training")  # a second copy inside
    shutil.copytree(root / "Testing", root / "old" / "Testing")
    image = cv2.imread(str(next(glioma.glob("*.jpg"))))
    shutil.copy(next(glioma.glob("*.jpg")), glioma / "Tr-gl_0100.JPG")
    cv2.imwrite(str(glioma / "Tr-gl_0101.png"), image)
    (glioma / ".DS_Store").write_bytes(b"\0")
    (glioma / "Thumbs.db").write_bytes(b"\0")
    (glioma / "notes.txt").write_text("scanner notes")
    (root / "__MACOSX").mkdir()
    shutil.copy(glioma / "Tr-gl_0100.JPG", root / "__MACOSX" / "x.jpg")

    scan = read_layout(get_task("brain/4class"), tmp_path / "download")

    assert scan.root == root.resolve()
    assert per_label(scan) == {"glioma": N + 2, "meningioma": N, "notumor": N, "pituitary": N}
    used = set(scan.table["path"])
    assert str(glioma / "Tr-gl_0100.JPG") in used and str(glioma / "Tr-gl_0101.png") in used
    assert reasons(scan) == {
        str(root / "old"): "nested copy of the layout",
        str(root / "__MACOSX"): "junk folder (OS or tool metadata)",
        str(glioma / ".DS_Store"): "junk file (OS metadata)",
        str(glioma / "Thumbs.db"): "junk file (OS metadata)",
        str(glioma / "notes.txt"): "not an image (.txt)",
    }
    assert not any("old" in Path(p).parts or "__MACOSX" in p for p in scan.table["path"])


def test_brain_older_release_names_and_left_out_class(tmp_path):
    root = phantom("brain", tmp_path / "brain")
    for split in ("Training", "Testing"):
        for old, new in (("glioma", "glioma_tumor"), ("notumor", "no_tumor")):
            (root / split / old).rename(root / split / new)
    scan = read_layout(get_task("brain/3class"), root)
    assert set(scan.table["source_label"]) == {"glioma", "meningioma", "pituitary"}
    assert set(reasons(scan).values()) == {"class notumor left out by variant 3class"}
    assert len(scan.skipped) == N


def test_shallowest_copy_wins_deeper_copy_is_reported(tmp_path):
    outer = phantom("pneumonia", tmp_path / "dl" / "chest_xray")
    shutil.copytree(outer, tmp_path / "copy")
    (tmp_path / "copy").rename(outer / "chest_xray")  # the real zip's chest_xray/chest_xray/
    scan = read_layout(get_task("pneumonia"), tmp_path / "dl")
    assert scan.root == outer.resolve()
    assert reasons(scan) == {str(outer / "chest_xray"): "nested copy of the layout"}
    assert per_label(scan) == {"NORMAL": N, "PNEUMONIA": N}
    assert scan.synthetic


def test_layout_root_at_most_three_levels_down(tmp_path):
    phantom("leukemia", tmp_path / "a" / "b" / "c")
    found = read_layout(get_task("leukemia"), tmp_path).root
    assert found == (tmp_path / "a" / "b" / "c").resolve()
    phantom("leukemia", tmp_path / "w" / "x" / "y" / "z" / "too-deep")
    with pytest.raises(DataError, match="under .*/w .*searched 3 levels down"):
        read_layout(get_task("leukemia"), tmp_path / "w")


def test_ham_single_folder_missing_extra_and_duplicate_images(tmp_path):
    root = phantom("skin", tmp_path / "ham")
    single = root / "HAM10000_images"
    single.mkdir()
    for image in sorted(root.glob("HAM10000_images_part_*/*.jpg")):
        image.rename(single / image.name)
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str)
    gone = meta["image_id"].iloc[0]
    (single / f"{gone}.jpg").unlink()
    extra = single / "ISIC_9999999.jpg"
    shutil.copy(next(single.glob("*.jpg")), extra)
    duplicate = root / "ham10000_images_part_1" / next(single.glob("*.jpg")).name
    duplicate.parent.mkdir()
    shutil.copy(single / duplicate.name, duplicate)
    (root / "hmnist_28_28_RGB.csv").write_text("pixel0000\n1\n")

    scan = read_layout(get_task("skin"), root)

    assert len(scan.table) == len(meta)
    missing = scan.table[scan.table["path"].str.endswith(f"{gone}.jpg")]
    assert missing["path"].tolist() == [str(root / "HAM10000_images_part_1" / f"{gone}.jpg")]
    assert any("1 metadata rows have no image file" in n for n in scan.notes)
    assert reasons(scan) == {str(extra): "not in metadata",
                             str(duplicate): "duplicate image id (another copy is used)",
                             str(root / "hmnist_28_28_RGB.csv"): "not an image (.csv)"}
    assert scan.table.groupby("group").size().max() > 1  # lesions with several images


def test_ham_images_beside_the_csv(tmp_path):
    root = phantom("skin", tmp_path / "ham")
    for image in sorted(root.glob("HAM10000_images_part_*/*.jpg")):
        image.rename(root / image.name)
    scan = read_layout(get_task("skin"), root)
    assert len(scan.table) == 7 * N and not scan.skipped
    assert all(Path(p).parent == root for p in scan.table["path"])


def test_ham_unknown_dx_and_missing_columns(tmp_path):
    root = phantom("skin", tmp_path / "ham")
    csv = root / "HAM10000_metadata.csv"
    meta = pd.read_csv(csv, dtype=str)
    meta.loc[2, "dx"] = "melanoma"
    meta.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv line 4: unknown dx 'melanoma'.*"
                                        r"valid codes: akiec, bcc, bkl, df, mel, nv, vasc"):
        read_layout(get_task("skin"), root)
    meta.drop(columns=["dx", "lesion_id"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv lacks column\(s\) lesion_id, dx; "
                                        r"expected columns lesion_id,image_id,dx"):
        read_layout(get_task("skin"), root)


def test_leukemia_long_folder_names_segmented_and_patient_ids(tmp_path):
    root = phantom("leukemia", tmp_path / "all")
    original = root / "Original"
    (original / "Early").rename(original / "[Malignant] early Pre-B")
    (original / "Pro").rename(original / "Pro-B")
    shutil.copytree(original, root / "Segmented")
    benign = original / "Benign"
    for old, new in (("WBC-Benign-001.jpg", "patient12_cell1.jpg"),
                     ("WBC-Benign-002.jpg", "Pt-3 smear.jpg"),
                     ("WBC-Benign-003.jpg", "pat_007.jpg")):
        (benign / old).rename(benign / new)

    scan = read_layout(get_task("leukemia"), root)

    assert per_label(scan) == {"Benign": N, "Early": N, "Pre": N, "Pro": N}
    groups = dict(zip(scan.table["path"].map(lambda p: Path(p).name), scan.table["group"]))
    assert (groups["patient12_cell1.jpg"], groups["Pt-3 smear.jpg"], groups["pat_007.jpg"]) == (
        "patient12", "patient3", "patient7")
    assert groups["WBC-Benign-004.jpg"] == "Original/Benign/WBC-Benign-004.jpg"
    assert reasons(scan) == {str(root / "Segmented"): "Segmented/ is a derived copy of Original/"}
    note = f"3 of {4 * N} images carry a recoverable patient id"
    assert any(n.startswith(note) for n in scan.notes)


def test_leukemia_release_with_class_folders_at_its_root(tmp_path):
    root = phantom("leukemia", tmp_path / "tmp")
    flat = tmp_path / "Blood cell Cancer [ALL]"
    for src, dst in (("Benign", "Benign"), ("Early", "[Malignant] early Pre-B"),
                     ("Pre", "[Malignant] Pre-B"), ("Pro", "[Malignant] Pro-B")):
        shutil.move(root / "Original" / src, flat / dst)
    scan = read_layout(get_task("leukemia/binary"), tmp_path / "Blood cell Cancer [ALL]")
    assert per_label(scan) == {"Benign": N, "ALL": 3 * N}


@pytest.mark.parametrize("stem, patient", [
    ("person1_bacteria_1", "person1"), ("person1_virus_6", "person1"),
    ("person1430_bacteria_3701", "person1430"), ("IM-0115-0001", "IM-0115"),
    ("NORMAL2-IM-1427-0001", "NORMAL2-IM-1427"), ("NORMAL2-IM-0589-0001-0002", "NORMAL2-IM-0589"),
    ("scan_0001", None), ("personX_virus_1", None),
])
def test_pneumonia_patient_ids_from_file_names(stem, patient):
    assert patient_id(stem) == patient


@pytest.mark.parametrize("name, group", [
    ("patient12_a.jpg", "patient12"), ("PT_5.jpg", "patient5"), ("pat 9.jpg", "patient9"),
    ("WBC-Malignant-Pre-001.jpg", None),
])
def test_leukemia_patient_pattern(name, group):
    assert patient_group(name) == group


def test_pneumonia_unmatched_names_and_notes(tmp_path):
    root = phantom("pneumonia", tmp_path / "cx")
    stray = root / "train" / "NORMAL" / "scan_0001.jpeg"
    shutil.copy(next((root / "train" / "NORMAL").glob("*.jpeg")), stray)
    scan = read_layout(get_task("pneumonia"), root)
    row = scan.table[scan.table["path"] == str(stray)].iloc[0]
    assert (row["group"], row["split"]) == ("train/NORMAL/scan_0001.jpeg", "")
    assert "1 file names carry no patient id; each is its own group" in scan.notes
    assert any("shipped val/ (4 images) is merged into train" in n for n in scan.notes)
    assert set(scan.table["split"]) == {"", "test"}


def test_missing_folder_file_and_wrong_layout(tmp_path):
    with pytest.raises(DataError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        read_layout(get_task("brain"), tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="expected a data folder, got the file"):
        read_layout(get_task("brain"), tmp_path / "f.jpg")
    phantom("pneumonia", tmp_path / "cx")
    with pytest.raises(DataError, match=r"expected Training/ and Testing/ under .*/cx "
                                        r"\(Kaggle Brain Tumor MRI layout"):
        read_layout(get_task("brain"), tmp_path / "cx")
    with pytest.raises(DataError, match="expected HAM10000_metadata.csv under"):
        read_layout(get_task("skin"), tmp_path / "cx")


def test_empty_and_unknown_class_folders(tmp_path):
    root = phantom("brain", tmp_path / "b")
    empty = root / "Testing" / "glioma"
    for image in empty.glob("*.jpg"):
        image.unlink()
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=f"class folder {empty} holds no images"):
        read_layout(get_task("brain"), root)
    shutil.rmtree(empty)
    (root / "Training" / "astrocytoma").mkdir()
    with pytest.raises(DataError, match=r"unknown class folder .*Training/astrocytoma; valid class "
                                        r"folder names: glioma, meningioma, notumor, pituitary"):
        read_layout(get_task("brain"), root)
    cx = phantom("pneumonia", tmp_path / "cx")
    (cx / "test" / "COVID").mkdir()
    with pytest.raises(DataError, match="unknown class folder .*COVID; valid .*NORMAL, PNEUMONIA"):
        read_layout(get_task("pneumonia"), cx)


def test_folder_class_per_folder(tmp_path):
    root = phantom("folder", tmp_path / "mine")
    shutil.copy(root / "disc" / "disc_0000.jpg", root / "loose.jpg")
    scan = read_layout(get_task("folder"), root)
    assert scan.task.classes == ("disc", "ring", "square") and scan.task.positive_class is None
    assert scan.task.label_map == {c: c for c in scan.task.classes}
    assert reasons(scan) == {str(root / "loose.jpg"): "image outside a class folder"}
    assert (scan.table["group"] == [Path(p).relative_to(root).as_posix()
                                    for p in scan.table["path"]]).all()


def test_folder_split_folders(tmp_path):
    root = phantom("folder", tmp_path / "mine")
    for cls in ("disc", "ring"):
        (root / "test" / cls).mkdir(parents=True)
        shutil.move(root / cls / f"{cls}_0000.jpg", root / "test" / cls)
        shutil.move(root / cls, root / "train" / cls)
    shutil.rmtree(root / "square")
    scan = read_layout(get_task("folder"), root)
    assert scan.task.classes == ("disc", "ring")
    assert scan.table.groupby(["label", "split"]).size().to_dict() == {
        ("disc", "test"): 1, ("disc", "train"): N - 1,
        ("ring", "test"): 1, ("ring", "train"): N - 1}


def test_folder_csv_relative_absolute_groups_and_splits(tmp_path):
    root = phantom("folder", tmp_path / "mine")
    absolute = str(root / "ring" / "ring_0000.jpg")
    rows = [("disc/disc_0000.jpg", "round", "p1", "Train"),
            ("disc/disc_0001.jpg", "round", "p1", ""),
            (absolute, "hollow", "", "test"),
            ("square/square_0000.jpg", "boxy", "p2", "val")]
    labels = pd.DataFrame(rows, columns=["path", "label", "group", "split"])
    labels.to_csv(root / "labels.csv", index=False)
    for target in (root, root / "labels.csv"):
        scan = read_layout(get_task("folder"), target)
        table = scan.table.set_index("path")
        assert scan.task.classes == ("boxy", "hollow", "round")
        disc = str(root / "disc" / "disc_0000.jpg")
        assert table.loc[disc, ["group", "split"]].tolist() == ["p1", "train"]
        assert table.loc[absolute, ["label", "group", "split"]].tolist() == [
            "hollow", "ring/ring_0000.jpg", "test"]
    other = tmp_path / "elsewhere.csv"
    pd.DataFrame({"path": [absolute, str(root / "disc" / "disc_0000.jpg")],
                  "label": ["a", "b"]}).to_csv(other, index=False)
    assert read_layout(get_task("folder"), other).table["split"].tolist() == ["", ""]


@pytest.mark.parametrize("csv_text, message", [
    ("path,label,split\na.jpg,x,train\nb.jpg,y,holdout\n",
     r"line 3: split 'holdout' is not one of"),
    ("file,label\na.jpg,x\n",
     r"lacks column\(s\) path; expected columns path,label\[,group\]\[,split\]"),
    ("path,label\na.jpg,x\nb.jpg,x\n", r"found 1 class\(es\) \['x'\] .*need at least 2"),
    ("path,label\na.jpg,x\nb.jpg,\n", r"line 3: empty label"),
])
def test_folder_csv_errors_name_row_and_value(tmp_path, csv_text, message):
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        read_layout(get_task("folder"), tmp_path)


def test_folder_needs_two_non_empty_classes(tmp_path):
    (tmp_path / "only").mkdir()
    cv2.imwrite(str(tmp_path / "only" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"found 1 class\(es\) \['only'\]"):
        read_layout(get_task("folder"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*/empty holds no images"):
        read_layout(get_task("folder"), tmp_path)


def test_a_class_the_variant_leaves_out_is_one_line_without_paths(tmp_path):
    from orchestrator.data.table import Skipped, summarize_skipped

    lines = summarize_skipped([Skipped(f"/d/notumor/{i}.jpg", "class notumor left out by "
                                       "variant 3class", chosen=True) for i in range(7)]
                              + [Skipped("/d/glioma/x.jpg", "not an image")])
    assert lines == ["left out 7 image(s): class notumor left out by variant 3class",
                     "skipped 1 (not an image): /d/glioma/x.jpg"]
