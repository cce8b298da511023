"""Writing small DICOM files whose pixels are known: the DICOM phantom and the tests' quirks.

A file is written as a modality would store it: stored values that the modality LUT (`slope`,
`intercept`) maps to physical values, an optional display window, MONOCHROME1 where asked, and
the header fields a hospital export carries (patient, study, dates), so that what MedSweep must
keep out of every record is really there to be kept out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class Header:
    """The identifying and descriptive fields of one file (all optional)."""

    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""  # YYYYMMDD
    accession: str = ""
    institution: str = ""
    study_uid: str = ""
    modality: str = "OT"
    extra: dict = field(default_factory=dict)  # more keywords -> values


def write_dicom(path: str | Path, stored: np.ndarray, *, header: Header = Header(),
                photometric: str = "", slope: float | None = None,
                intercept: float | None = None, window: tuple[float, float] | None = None,
                signed: bool = False, bits_stored: int | None = None,
                sop_class: str = SECONDARY_CAPTURE, compress_rle: bool = False,
                big_endian: bool = False) -> Path:
    """Write `stored` ((H, W) gray, (H, W, 3) colour, or (F, H, W) frames) as one DICOM file.

    `photometric` defaults to MONOCHROME2 (gray) or RGB (colour); YBR_FULL is written as given
    (the caller converts the values)."""
    from pydicom import dcmwrite
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless,
                             generate_uid)

    stored = np.asarray(stored)
    colour = stored.ndim == 3 and stored.shape[-1] == 3
    frames = stored.shape[0] if stored.ndim == 3 and not colour else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    # a UID given in `extra` is used throughout (a deterministic file); else a fresh one
    meta.MediaStorageSOPInstanceUID = header.extra.get("SOPInstanceUID") or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = header.study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = header.modality
    ds.PatientID = header.patient_id
    ds.PatientName = header.patient_name
    ds.PatientBirthDate = header.birth_date
    ds.AccessionNumber = header.accession
    if header.institution:
        ds.InstitutionName = header.institution
    for keyword, value in header.extra.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = stored.shape[-3:-1] if colour else stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    wide = stored.dtype.itemsize > 1
    ds.BitsAllocated = 16 if wide else 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = slope if slope is not None else 1
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = {(True, True): ">i2", (True, False): ">u2", (False, True): "<i2",
             (False, False): "<u2"}[(big_endian, signed)] if wide else np.uint8
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    if compress_rle:
        ds.compress(RLELossless, generate_instance_uid=False)  # keep the UID given
    if big_endian:  # the pixel bytes above are already big-endian
        dcmwrite(path, ds, little_endian=False, implicit_vr=False, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_report(path: str | Path, header: Header = Header()) -> Path:
    """A structured report: a DICOM object with no pixel data, as PACS exports mix in."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = header.extra.get("SOPInstanceUID") or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientID = header.patient_id
    ds.PatientName = header.patient_name
    ds.StudyInstanceUID = header.study_uid or generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
