"""Patient groups from DICOM headers: one group per patient, under a salted pseudonym; the
identifier itself never reaches the manifest or the console."""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.dicom_write import Header, write_dicom
from orchestrator.data.header_groups import (PSEUDONYM_PREFIX, data_salt, groups_from_headers,
                                             pseudonym)
from orchestrator.data.readers.folder import read as read_folder
from orchestrator.data.table import SALT_FILE
from tasks import get_task

PATIENTS = ["DOE-4711", "ROE-0815", "POE-1234", "MOE-9999", "LOE-2024", "KOE-3141", "JOE-2718",
            "HOE-1618"]


def export(root, with_group_column=False, empty_patient_id=False, salt=None):
    """8 patients x 6 images, two classes by patient; labels.csv without a group column.
    `salt`: a fixed salt beside the data (a fixed split), else one is made on first use."""
    root.mkdir(parents=True, exist_ok=True)
    if salt is not None:
        (root / SALT_FILE).write_text(salt.hex() + "\n")
    rng = np.random.default_rng(1)
    rows = []
    for p, patient in enumerate(PATIENTS):
        study = f"1.2.826.0.1.3680043.8.498.{p + 1}"
        for k in range(6):
            stored = rng.integers(0, 4096, (20, 20)).astype(np.uint16)
            stored[:, : 4 + 2 * p + k] = 4095  # every image its own picture
            name = f"{patient}_{k}.dcm" if k % 2 else f"IMG{p}{k}"
            header = Header(patient_id="" if empty_patient_id else patient,
                            patient_name=f"Doe^Jane^{p}", study_uid=study)
            write_dicom(root / name, stored, header=header, window=(2048, 4096))
            rows.append({"path": name, "label": "abnormal" if p % 2 else "normal",
                         **({"group": f"site-{p}"} if with_group_column else {})})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_pseudonyms_are_stable_per_salt_and_hide_the_identifier():
    a, b = pseudonym("DOE-4711", b"1" * 16), pseudonym("DOE-4711", b"2" * 16)
    assert a == pseudonym("DOE-4711", b"1" * 16) and a != b
    assert a.startswith(PSEUDONYM_PREFIX) and "4711" not in a


def test_each_patient_is_one_group_and_no_identifier_is_written(tmp_path):
    root = export(tmp_path / "export", salt=bytes(range(16)))
    said = []
    prepared = prepare_dataset(get_task("folder"), root, 32, manifest_dir=tmp_path / "m",
                               log=said.append)
    groups = prepared.table.groupby("group").size()
    assert len(groups) == len(PATIENTS) and (groups == 6).all()
    assert all(g.startswith(PSEUDONYM_PREFIX) for g in groups.index)
    # a patient's images share one split
    assert (prepared.table.groupby("group")["split"].nunique() == 1).all()
    written = (tmp_path / "m" / "manifest.csv").read_text() + "\n".join(said)
    for patient in PATIENTS:
        assert patient.split("-")[1] not in "".join(prepared.table["group"])
        assert patient not in written.replace(f"{patient}_", "")  # file names are the user's
    assert any(line.startswith("DICOM headers: 48 images grouped by patient") for line in said)
    salt = (root / SALT_FILE)
    assert salt.is_file() and salt.read_text().strip() not in written
    # the same data, read again: the same groups (the salt stays beside the data), and the
    # salt file is neither an image nor a skipped file
    scan = read_folder(get_task("folder"), root)
    again = groups_from_headers(scan.table, scan.root, tmp_path / "cache", log=lambda _: None)
    assert sorted(again["group"].unique()) == sorted(groups.index)
    assert not any(SALT_FILE in s.path for s in scan.skipped)


def test_a_given_group_column_wins_and_study_uid_stands_in_for_an_empty_patient_id(tmp_path):
    given = export(tmp_path / "given", with_group_column=True)
    scan = read_folder(get_task("folder"), given)
    kept = groups_from_headers(scan.table, scan.root, tmp_path / "cache", log=lambda _: None)
    assert sorted(kept["group"].unique()) == [f"site-{p}" for p in range(len(PATIENTS))]
    no_id = export(tmp_path / "no_id", empty_patient_id=True)
    scan = read_folder(get_task("folder"), no_id)
    said = []
    grouped = groups_from_headers(scan.table, scan.root, tmp_path / "cache", log=said.append)
    assert grouped["group"].nunique() == len(PATIENTS) and "StudyInstanceUID for 48" in said[0]


def test_a_read_only_folder_keeps_its_salt_in_the_cache(tmp_path):
    # /proc is read-only even for root (CI may run as root, for whom chmod changes nothing)
    root = Path("/proc/self") if Path("/proc/self").is_dir() else tmp_path / "ro"
    if root != Path("/proc/self"):
        root.mkdir()
        root.chmod(stat.S_IRUSR | stat.S_IXUSR)
    salt, where = data_salt(root, tmp_path / "cache")
    assert where.parent == tmp_path / "cache" / "salts" and not (root / SALT_FILE).exists()
    assert data_salt(root, tmp_path / "cache") == (salt, where)


def test_the_salt_is_made_once_and_reused(tmp_path):
    salt, where = data_salt(tmp_path, tmp_path / "cache")
    assert where == tmp_path / SALT_FILE and len(salt) == 16
    assert data_salt(tmp_path, tmp_path / "cache")[0] == salt
