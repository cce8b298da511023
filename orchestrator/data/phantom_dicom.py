"""The DICOM phantom: each phantom image written as a hospital PACS export would hold it.

The JPEG phantom's picture (its JPEG-decoded pixels, so both formats train on the same pixels)
is stored the way a modality stores it: gray images as 12-bit values behind a rescale (slope 1,
intercept -1024) with a window in the file that maps them back to exactly those 8-bit pixels,
every FOURTH one MONOCHROME1 (inverted in storage; the reader's inversion gives the picture
back); colour images as 8-bit RGB. Every THIRD file is RLE-compressed, every SIXTH has no file
extension, and one structured report (no pixels) sits beside the first image where the layout
has room for it within the 5% unreadable-file rule. Each file carries identifiers a real export
would carry, recognisably fake (`PHANTOM^SUBJECT^0007`, `MSPH-0007`, ...), so that what MedSweep
must keep out of every record is really there to be kept out.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from orchestrator.data.dicom_write import Header, write_dicom, write_report

FORMATS = ("jpeg", "dicom")
DEFAULT_FORMAT = "jpeg"
INSTITUTION = "MEDSWEEP PHANTOM HOSPITAL"
SLOPE, INTERCEPT = 1.0, -1024.0
STEP = 16  # 12-bit stored values: 16 per 8-bit level, plus a sub-level offset in 1..15
# LINEAR window (PS3.3 C.11.2.1.2) with width - 1 = 255 * STEP, centred so that stored value
# STEP * p + u (u in 1..15) windows to exactly p: its error (u - 8) / 16 stays below 1/2.
WINDOW = (STEP * 128 + 0.5 + INTERCEPT, 255.0 * STEP + 1.0)  # (1024.5, 4081)
MONOCHROME1_EVERY, RLE_EVERY, NO_EXTENSION_EVERY = 4, 3, 6
IMAGES_PER_PATIENT = 3  # where the layout draws no groups of its own
REPORT_MIN_PER_CLASS = 20  # one report among >= 21 files of its class: within 5% unreadable
MODALITY = {"brain_mri": "MR", "chest_xray": "DX", "ham10000": "XC",
            "blood_cell_all": "SM", "folder": "OT", "multihead_csv": "OT"}
SYNTHETIC_COMMENT = "SYNTHETIC PHANTOM - NOT A PATIENT (MedSweep)"


def check_format(fmt: str) -> str:
    """The phantom format, or a ValueError naming the choices."""
    if fmt not in FORMATS:
        raise ValueError(f"phantom format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def jpeg_pixels(image: np.ndarray, quality: int) -> np.ndarray:
    """What the JPEG phantom's file of `image` decodes to."""
    import cv2  # here: the trial config imports FORMATS, and should stay light

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV could not encode a phantom image"
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def stored_values(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit gray -> 12-bit stored values that WINDOW (after the rescale) maps back to it."""
    return (STEP * pixels.astype(np.uint16) + rng.integers(1, STEP, pixels.shape)
            ).astype(np.uint16)


def identifiers(number: int, seed: int) -> Header:
    """A synthetic patient's header fields: fake, yet shaped like a hospital's."""
    rng = np.random.default_rng([seed, number, 0xD1C0])
    birth = f"{int(rng.integers(1935, 2006))}{int(rng.integers(1, 13)):02d}" \
            f"{int(rng.integers(1, 29)):02d}"
    return Header(patient_id=f"MSPH-{number:04d}", patient_name=f"PHANTOM^SUBJECT^{number:04d}",
                  birth_date=birth, accession=f"MSACC{seed % 100:02d}{number:05d}",
                  institution=INSTITUTION, study_uid=_uid(seed, "study", number))


def phantom_salt(task: str, seed: int) -> str:
    """The salt file's text for a phantom: derived from its seed, since a synthetic patient's
    identifier needs no secret, and the same phantom then splits the same on every machine."""
    return hashlib.blake2b(f"medsweep-phantom-{task}-{seed}".encode(), digest_size=16
                           ).hexdigest() + "\n"


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medsweep-phantom", *map(str, parts)])


@dataclass
class DicomExport:
    """Writes one DICOM phantom; remembers patients and the running image count (write order
    is fixed, so every share and number is deterministic)."""

    layout: str
    seed: int
    with_report: bool
    patients: dict[str, int] = field(default_factory=dict)
    folder_counts: dict[str, int] = field(default_factory=dict)
    written: int = 0

    def save(self, root: Path, relative: str, image: np.ndarray, quality: int,
             group: str = "") -> str:
        """Write `image` (as the JPEG phantom would have it) at `relative` with the DICOM
        name; returns that name."""
        import cv2

        k, self.written = self.written, self.written + 1
        name = Path(relative).with_suffix("" if k % NO_EXTENSION_EVERY == 2 else ".dcm")
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        header = self._header(self._patient(group, name.parent.as_posix()), relative)
        pixels = jpeg_pixels(image, quality)
        rle = k % RLE_EVERY == 0
        if pixels.ndim == 3:  # colour: 8-bit RGB, as cameras and slide scanners export
            write_dicom(path, cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), header=header,
                        compress_rle=rle)
        else:
            mono1 = k % MONOCHROME1_EVERY == 1
            rng = np.random.default_rng([self.seed, k, 0x12B])
            write_dicom(path, stored_values(255 - pixels if mono1 else pixels, rng),
                        header=header, slope=SLOPE, intercept=INTERCEPT, window=WINDOW,
                        bits_stored=12, photometric="MONOCHROME1" if mono1 else "",
                        compress_rle=rle)
        if k == 0 and self.with_report:
            write_report(path.parent / f"{Path(relative).stem}_report",
                         replace(header, extra={"SOPInstanceUID": _uid(self.seed, "report")}))
        return name.as_posix()

    def _patient(self, group: str, folder: str) -> int:
        """The synthetic patient of an image: its layout's group, else IMAGES_PER_PATIENT
        consecutive images of one folder (so no patient straddles a given split)."""
        if not group:
            count = self.folder_counts.get(folder, 0)
            self.folder_counts[folder] = count + 1
            group = f"{folder}#{count // IMAGES_PER_PATIENT}"
        return self.patients.setdefault(group, len(self.patients) + 1)

    def _header(self, number: int, relative: str) -> Header:
        base = identifiers(number, self.seed)
        extra = {"SOPInstanceUID": _uid(self.seed, "image", relative),
                 "SeriesInstanceUID": _uid(self.seed, "series", number),
                 "ImageComments": SYNTHETIC_COMMENT, "BurnedInAnnotation": "NO"}
        return Header(patient_id=base.patient_id, patient_name=base.patient_name,
                      birth_date=base.birth_date, accession=base.accession,
                      institution=base.institution, study_uid=base.study_uid,
                      modality=MODALITY.get(self.layout, "OT"), extra=extra)
