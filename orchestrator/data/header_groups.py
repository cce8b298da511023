"""Patient groups from DICOM headers, under a pseudonym that never leaves the data folder.

A hospital export names the patient in every file (PatientID), and a patient's images must sit
on one side of every split. When the data give no group, a DICOM file's group is its PatientID
(its StudyInstanceUID when PatientID is empty). The identifier itself must never reach MLflow,
the console, the manifest or a report, so it is replaced at once by a salted hash: the salt is
random per data set and stays beside the data (`.medsweep_salt`, so the same data gives the same
groups, hence the same split, on every machine), or in the user's cache when the folder is
read-only. Without the salt a pseudonym cannot be traced back to the identifier by trying
likely IDs.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable

import pandas as pd

from orchestrator.data.dicom import is_dicom_file
from orchestrator.data.table import SALT_FILE

PSEUDONYM_PREFIX = "pt-"


def header_identifier(path: str | Path) -> tuple[str, str]:
    """(identifier, which header field it came from) of one DICOM file; ("", "") if none."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["PatientID", "StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is decoded
        return "", ""
    for field in ("PatientID", "StudyInstanceUID"):
        value = str(ds.get(field, "") or "").strip()
        if value:
            return value, field
    return "", ""


def pseudonym(identifier: str, salt: bytes) -> str:
    """A stable, salted stand-in for an identifier: the same patient, the same group."""
    digest = hashlib.blake2b(identifier.encode("utf-8", "surrogateescape"), key=salt,
                             digest_size=8).hexdigest()
    return PSEUDONYM_PREFIX + digest


def data_salt(root: Path, cache: Path) -> tuple[bytes, Path]:
    """(the data set's salt, where it is kept): `root/.medsweep_salt`, made on first use; in
    `cache/salts/` (keyed by the folder) when the data folder cannot be written."""
    beside = root / SALT_FILE
    key = hashlib.blake2b(str(root.resolve()).encode(), digest_size=16).hexdigest()
    for place in (beside, cache / "salts" / key):
        if place.is_file():
            return bytes.fromhex(place.read_text().strip()), place
    for place in (beside, cache / "salts" / key):
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        try:
            fd = os.open(place, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return bytes.fromhex(place.read_text().strip()), place
        except OSError:  # a read-only folder or file system
            continue
        salt = secrets.token_bytes(16)
        with os.fdopen(fd, "w") as handle:
            handle.write(salt.hex() + "\n")
        return salt, place
    raise OSError(f"cannot keep a salt beside {root} nor in {cache}")


def groups_from_headers(table: pd.DataFrame, root: Path, cache: Path,
                        log: Callable[[str], None] = print) -> pd.DataFrame:
    """The table with each DICOM image that has no group of its own (its group is its own
    relative path) grouped by its patient's pseudonym; groups the data gave are kept."""
    own = [Path(os.path.relpath(p, root)).as_posix() == g
           for p, g in zip(table["path"], table["group"])]
    found = {i: header_identifier(table["path"].iat[i]) for i in range(len(table))
             if own[i] and is_dicom_file(table["path"].iat[i])}
    found = {i: v for i, v in found.items() if v[0]}
    if not found:
        return table
    salt, kept = data_salt(root, cache)
    groups = table["group"].to_numpy(dtype=object).copy()
    for i, (identifier, _) in found.items():
        groups[i] = pseudonym(identifier, salt)
    by_study = sum(1 for _, field in found.values() if field == "StudyInstanceUID")
    study = f" (StudyInstanceUID for {by_study} without a PatientID)" if by_study else ""
    log(f"DICOM headers: {len(found)} images grouped by patient (PatientID{study}) into "
        f"{len({groups[i] for i in found})} groups; the IDs are replaced by salted pseudonyms "
        f"({PSEUDONYM_PREFIX}...), the salt kept in {kept}")
    return table.assign(group=groups)
