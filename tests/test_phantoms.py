"""Synthetic phantoms: real layouts, exact counts through the real readers, determinism, cache."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from orchestrator.data.cache import decode_file
from orchestrator.data.dicom import is_dicom_file
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import (HAM_COLUMNS, default_phantom_dir, ensure_phantom,
                                        write_phantom)
from orchestrator.data.readers.chest_xray import patient_id
from orchestrator.data.table import COLUMNS, PHANTOM_MARKER
from orchestrator.errors import ConfigError
from tasks import TASKS, get_task

PER_CLASS = 6
SIZE = 40
ALL_TASKS = [task for variants in TASKS.values() for task in variants.values()]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """One small phantom per task name, shared by every variant's round trip."""
    base = tmp_path_factory.mktemp("phantoms")
    return {name: write_phantom(get_task(name), base / name, per_class=PER_CLASS, size=SIZE)
            for name in TASKS}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _counts(scan) -> dict[tuple[str, str], int]:
    return scan.table.groupby(["label", "split"]).size().to_dict()


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.key)
def test_every_variant_round_trips_with_contract_table(task, phantoms):
    scan = read_layout(task, phantoms[task.name])
    table = scan.table
    assert tuple(table.columns) == COLUMNS + tuple(f"target_{h.name}" for h in scan.task.heads)
    assert table["path"].is_monotonic_increasing
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert set(table["label"]) == set(scan.task.classes)
    assert (table["group"] != "").all()
    assert scan.synthetic


def test_brain_counts_per_class_and_split(phantoms):
    n_test = round(PER_CLASS * 0.2)
    for key, classes in (("brain/3class", ("glioma", "meningioma", "pituitary")),
                         ("brain/4class", ("glioma", "meningioma", "notumor", "pituitary"))):
        scan = read_layout(get_task(key), phantoms["brain"])
        expected = {}
        for cls in classes:
            expected[(cls, "test")] = n_test
            expected[(cls, "")] = PER_CLASS - n_test
        assert _counts(scan) == expected
        assert scan.table["group"].tolist() == [
            Path(p).relative_to(phantoms["brain"]).as_posix() for p in scan.table["path"]]
    left_out = read_layout(get_task("brain/3class"), phantoms["brain"]).skipped
    assert len(left_out) == PER_CLASS
    assert {s.reason for s in left_out} == {"class notumor left out by variant 3class"}


def test_brain_uses_kaggle_names(phantoms):
    names = [p.name for p in phantoms["brain"].rglob("*.jpg")]
    assert all(re.fullmatch(r"T[re]-(gl|me|no|pi)_\d{4}\.jpg", n) for n in names)
    splits = {p.parent.parent.name for p in phantoms["brain"].rglob("*.jpg")}
    assert splits == {"Training", "Testing"}


def test_skin_counts_metadata_and_lesion_groups(phantoms):
    root = phantoms["skin"]
    scan = read_layout(get_task("skin"), root)
    assert _counts(scan) == {("benign", ""): 4 * PER_CLASS, ("malignant", ""): 3 * PER_CLASS}
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str)
    assert tuple(meta.columns) == HAM_COLUMNS
    dx_codes = get_task("skin").source_labels
    assert meta["dx"].value_counts().to_dict() == {dx: PER_CLASS for dx in dx_codes}
    per_lesion = meta.groupby("lesion_id")
    assert per_lesion.size().max() > 1 and per_lesion.size().max() <= 3
    assert (per_lesion[["dx", "age", "sex", "localization"]].nunique() == 1).all().all()
    assert set(scan.table["group"]) == set(meta["lesion_id"])
    parts = {Path(p).parent.name for p in scan.table["path"]}
    assert parts == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert all(re.fullmatch(r"ISIC_\d{7}", i) for i in meta["image_id"])


def test_leukemia_counts_and_names(phantoms):
    four = read_layout(get_task("leukemia/4class"), phantoms["leukemia"])
    assert _counts(four) == {(c, ""): PER_CLASS for c in ("Benign", "Early", "Pre", "Pro")}
    binary = read_layout(get_task("leukemia/binary"), phantoms["leukemia"])
    assert _counts(binary) == {("Benign", ""): PER_CLASS, ("ALL", ""): 3 * PER_CLASS}
    names = {Path(p).name for p in four.table["path"]}
    assert "WBC-Benign-001.jpg" in names and "WBC-Malignant-Early-001.jpg" in names


def test_pneumonia_splits_patients_and_names(phantoms):
    root = phantoms["pneumonia"]
    scan = read_layout(get_task("pneumonia"), root)
    table = scan.table
    assert table["label"].value_counts().to_dict() == {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS}
    for cls in ("NORMAL", "PNEUMONIA"):
        assert len(list((root / "val" / cls).glob("*.jpeg"))) == 2
        assert (table[table["label"] == cls]["split"] == "test").sum() >= round(PER_CLASS * 0.2)
    assert all(patient_id(Path(p).stem) for p in table["path"])
    test_groups = set(table.loc[table["split"] == "test", "group"])
    assert not test_groups & set(table.loc[table["split"] == "", "group"])
    stems = [Path(p).stem for p in table["path"]]
    assert any(re.fullmatch(r"person\d+_(bacteria|virus)_\d+", s) for s in stems)
    assert any(re.fullmatch(r"(NORMAL2-)?IM-\d{4}-\d{4}", s) for s in stems)
    assert table.groupby("group").size().max() > 1


def test_folder_phantom_discovers_three_shapes(phantoms):
    scan = read_layout(get_task("folder"), phantoms["folder"])
    assert scan.task.classes == ("disc", "ring", "square")
    assert _counts(scan) == {(c, ""): PER_CLASS for c in scan.task.classes}


@pytest.mark.parametrize("name, channels", [("brain", 1), ("pneumonia", 1), ("skin", 3),
                                            ("leukemia", 3), ("folder", 3)])
def test_channels_and_size(name, channels, phantoms):
    image = cv2.imread(str(next(phantoms[name].rglob("*.jp*g"))), cv2.IMREAD_UNCHANGED)
    assert (image.ndim == 2) == (channels == 1)
    assert image.shape[:2] == ((SIZE, round(SIZE * 4 / 3)) if name == "skin" else (SIZE, SIZE))


def test_default_sizes(tmp_path):
    brain = write_phantom(get_task("brain"), tmp_path / "b", per_class=4)
    skin = write_phantom(get_task("skin"), tmp_path / "s", per_class=4)
    assert cv2.imread(str(next(brain.rglob("*.jpg"))), cv2.IMREAD_UNCHANGED).shape == (128, 128)
    assert cv2.imread(str(next(skin.rglob("*.jpg")))).shape == (120, 160, 3)


def test_marker_says_synthetic(phantoms):
    text = (phantoms["brain"] / PHANTOM_MARKER).read_text()
    assert "SYNTHETIC" in text and "NOT MEDICAL" in text
    assert "task: brain" in text and "seed: 0" in text and f"per_class: {PER_CLASS}" in text


@pytest.mark.parametrize("fmt", ["jpeg", "dicom"])
@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_same_bytes_other_seed_differs(name, fmt, tmp_path):
    task = get_task(name)
    first = _files(write_phantom(task, tmp_path / "a", per_class=4, seed=3, size=32, fmt=fmt))
    again = _files(write_phantom(task, tmp_path / "b", per_class=4, seed=3, size=32, fmt=fmt))
    other = _files(write_phantom(task, tmp_path / "c", per_class=4, seed=4, size=32, fmt=fmt))
    assert first == again
    images = {v for k, v in first.items() if not k.endswith((".txt", ".csv"))}
    assert len(images) >= 8 and not images & set(other.values())


def test_bad_arguments_are_config_errors(tmp_path):
    task = get_task("brain")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        write_phantom(task, tmp_path / "full")
    with pytest.raises(ConfigError, match="per_class"):
        write_phantom(task, tmp_path / "a", per_class=3)
    with pytest.raises(ConfigError, match="size"):
        write_phantom(task, tmp_path / "b", size=8)
    with pytest.raises(ConfigError, match="seed"):
        write_phantom(task, tmp_path / "c", seed=-1)


def test_ensure_phantom_writes_once_and_announces(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSWEEP_CACHE", str(tmp_path / "cache"))
    task = get_task("pneumonia")
    expected = tmp_path / "cache" / "phantoms" / "pneumonia-n4-s1"
    assert default_phantom_dir(task, 4, 1) == expected
    root = ensure_phantom(task, per_class=4, seed=1)
    assert root == expected and (root / PHANTOM_MARKER).exists()
    assert "SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES" in capsys.readouterr().err
    stamp = (root / PHANTOM_MARKER).stat().st_mtime_ns
    assert ensure_phantom(task, per_class=4, seed=1) == root
    assert (root / PHANTOM_MARKER).stat().st_mtime_ns == stamp
    assert "NOT MEDICAL" in capsys.readouterr().err
    assert [p.name for p in root.parent.iterdir()] == ["pneumonia-n4-s1"]  # no temp dirs left
    assert read_layout(task, root).synthetic


# --- the DICOM phantom ------------------------------------------------------------------------

DICOM_SIZE = 32


def _dicom_pairs(jpeg_root: Path, dicom_root: Path) -> list[tuple[Path, Path]]:
    """(JPEG phantom file, the DICOM phantom's file of the same image), by name without suffix."""
    dicoms = {p.relative_to(dicom_root).with_suffix("").as_posix(): p
              for p in dicom_root.rglob("*") if p.is_file() and is_dicom_file(p)}
    return [(p, dicoms[p.relative_to(jpeg_root).with_suffix("").as_posix()])
            for p in sorted(jpeg_root.rglob("*")) if p.suffix in (".jpg", ".jpeg")]


@pytest.mark.parametrize("name", list(TASKS))
def test_dicom_phantom_reads_as_the_jpeg_phantoms_pixels(name, tmp_path):
    """Tolerance 0: the DICOM phantom stores the JPEG phantom's decoded pixels, so the reader's
    chain (rescale, window, MONOCHROME1 inversion) must give back every pixel exactly."""
    task = get_task(name)
    jpeg = write_phantom(task, tmp_path / "jpeg", per_class=4, size=DICOM_SIZE)
    dcm = write_phantom(task, tmp_path / "dcm", per_class=4, size=DICOM_SIZE, fmt="dicom")
    pairs = _dicom_pairs(jpeg, dcm)
    assert len(pairs) == sum(1 for p in jpeg.rglob("*") if p.suffix in (".jpg", ".jpeg"))
    for a, b in pairs:
        np.testing.assert_array_equal(decode_file(b)[0], decode_file(a)[0], err_msg=str(b))
    assert len(read_layout(task, dcm).table) == len(read_layout(task, jpeg).table)
    if task.source_channels == 1:  # stored as 12-bit values: a reader that skipped the
        raw = pydicom.dcmread(pairs[0][1]).pixel_array  # rescale and window would not match
        assert raw.max() > 255 and not np.array_equal(raw, decode_file(pairs[0][0])[0])


def test_dicom_phantom_has_a_hospital_exports_quirks_and_fake_identifiers(tmp_path):
    root = write_phantom(get_task("brain"), tmp_path / "b", per_class=20, size=DICOM_SIZE,
                         fmt="dicom")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_dicom_file(p))
    sets = {p: pydicom.dcmread(p) for p in files}
    images = {p: ds for p, ds in sets.items() if "PixelData" in ds}
    (report,) = [p for p, ds in sets.items() if ds.Modality == "SR"]
    assert len(images) == 80 and "PixelData" not in sets[report]
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in images.values()}
    assert syntaxes == {pydicom.uid.RLELossless, pydicom.uid.ExplicitVRLittleEndian}
    photometric = [ds.PhotometricInterpretation for ds in images.values()]
    assert photometric.count("MONOCHROME1") == 20 and photometric.count("MONOCHROME2") == 60
    assert sum(1 for p in images if p.suffix == "") > 10
    for ds in images.values():
        assert (ds.BitsStored, float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (
            12, 1.0, -1024.0)
        assert "WindowCenter" in ds and ds.pixel_array.max() <= 4095
        assert re.fullmatch(r"PHANTOM\^SUBJECT\^\d{4}", str(ds.PatientName))
        assert re.fullmatch(r"MSPH-\d{4}", ds.PatientID)
        assert re.fullmatch(r"(19[3-9]\d|200[0-5])(0[1-9]|1[0-2])(0[1-9]|1\d|2[0-8])",
                            ds.PatientBirthDate)
        assert re.fullmatch(r"MSACC\d{7}", ds.AccessionNumber)
        assert ds.InstitutionName == "MEDSWEEP PHANTOM HOSPITAL" and "SYNTHETIC" in \
            ds.ImageComments
    per_patient = pd.Series([ds.PatientID for ds in images.values()]).value_counts()
    assert per_patient.max() == 3 and (per_patient == 3).mean() > 0.5  # a few per patient
    for ds in images.values():  # one patient, one study and one birth date
        same = [o for o in images.values() if o.PatientID == ds.PatientID]
        assert {(o.StudyInstanceUID, o.PatientBirthDate, o.PatientName) for o in same} == {
            (ds.StudyInstanceUID, ds.PatientBirthDate, ds.PatientName)}
    assert len({ds.SOPInstanceUID for ds in sets.values()}) == len(sets)


def test_a_layouts_own_groups_are_its_dicom_patients(tmp_path):
    """Pneumonia's patients (by file name) are the DICOM phantom's patients (by header)."""
    task = get_task("pneumonia")
    scan = read_layout(task, write_phantom(task, tmp_path / "p", per_class=12,
                                           size=DICOM_SIZE, fmt="dicom"))
    ids = scan.table["path"].map(lambda p: pydicom.dcmread(p, stop_before_pixels=True).PatientID)
    by_name = scan.table.groupby("group")["path"].apply(lambda rows: set(ids[rows.index]))
    assert (by_name.map(len) == 1).all() and ids.nunique() == len(by_name)


def test_the_dicom_phantom_trains_through_the_pipeline(tmp_path, monkeypatch):
    """prepare_dataset on the DICOM phantom: its own cache folder, the report left out with
    its reason within the 5% rule, patients grouped from the headers, the JPEG's pixels."""
    from orchestrator.data.dataset import prepare_dataset

    monkeypatch.setenv("MEDSWEEP_CACHE", str(tmp_path / "cache"))
    task = get_task("brain")
    lines: list[str] = []
    data = prepare_dataset(task, None, 32, phantom_per_class=20, phantom_format="dicom",
                           log=lines.append)
    assert data.root == default_phantom_dir(task, 20, 0, "dicom")
    assert data.root.name == "brain-n20-s0-dicom" and data.synthetic
    assert data.integrity.lost["detail"].tolist() == [
        "DICOM object without pixel data (structured report)"]
    assert any("grouped by patient" in line for line in lines)
    assert data.table["group"].str.startswith("pt-").all()
    assert data.table["group"].value_counts().max() == 3
    jpeg = prepare_dataset(task, None, 32, phantom_per_class=20, log=lines.append)
    assert jpeg.root.name == "brain-n20-s0"
    rows = data.table.assign(stem=data.table["path"].map(lambda p: Path(p).stem)).set_index("stem")
    other = jpeg.table.assign(stem=jpeg.table["path"].map(lambda p: Path(p).stem))
    np.testing.assert_array_equal(data.images[rows.loc[other["stem"], "row"].to_numpy()],
                                  jpeg.images[other["row"].to_numpy()])


def test_format_flags_reach_the_config_and_the_files(tmp_path, capsys):
    from orchestrator.data.__main__ import main as data_main
    from orchestrator.train.__main__ import _parser as train_parser
    from orchestrator.train.config import TrialConfig

    assert TrialConfig(phantom_format="dicom").phantom_format == "dicom"
    with pytest.raises(ConfigError, match="phantom_format: 'png' is not one of jpeg, dicom"):
        TrialConfig(phantom_format="png")
    assert train_parser().parse_args(["brain", "--phantom-format", "dicom"]).phantom_format \
        == "dicom"
    with pytest.raises(ConfigError, match="phantom format 'tiff'"):
        write_phantom(get_task("brain"), tmp_path / "t", fmt="tiff")
    assert data_main(["synth", "brain", str(tmp_path / "d"), "--per-class", "20", "--size",
                      "32", "--format", "dicom"]) == 0
    out = capsys.readouterr().out
    assert "wrote 81 synthetic DICOM files for task brain" in out
    assert "(1 of them a structured report without pixels)" in out
    assert "format: dicom" in (tmp_path / "d" / PHANTOM_MARKER).read_text()
