"""Deterministic synthetic phantoms, written in exactly each task's real on-disk layout.

A phantom lets the whole pipeline (reader, splitter, trainer, sweep) run on a fresh machine with
no download, through the same reader code that reads the real data set. Every phantom carries
`PHANTOM_MARKER` at its root, and `ensure_phantom` prints a banner, so synthetic results are
never mistaken for medical ones. Pixels come from `phantom_draw`; this module decides names,
folders, splits, groups and metadata.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from orchestrator.data import phantom_draw as draw
from orchestrator.data.phantom_dicom import (DEFAULT_FORMAT, REPORT_MIN_PER_CLASS, DicomExport,
                                             check_format, phantom_salt)
from orchestrator.data.table import PHANTOM_MARKER, SALT_FILE
from orchestrator.errors import ConfigError, DataError
from tasks.base import Task
from tasks.multihead import SHAPES, TEXTURES

JPEG_QUALITY = 92
SWAP_FRACTION = 0.1  # images drawn with another class's feature: caps accuracy near 90%
TEST_FRACTION = 0.2
MIN_PER_CLASS = 4  # pneumonia needs 2 val + 1 test + 1 train
MIN_SIZE = 32
DEFAULT_SIZE = 128
SKIN_DEFAULT_SIZE = 120  # 160 x 120, the 4:3 of HAM10000's 600 x 450
HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
FOLDER_CLASSES = ("disc", "ring", "square")
MULTIHEAD_COLUMNS = ("path", "shape", "texture", "size", "group")
SIZE_MM = (20.0, 60.0)  # the multihead token's diameter, uniform, in a 100 mm field of view


@dataclass(frozen=True)
class _Writer:
    """One phantom being written: seeded randomness and JPEG (or DICOM) output under `root`."""

    task: Task
    root: Path
    per_class: int
    seed: int
    size: int
    dicom: DicomExport | None = None  # None: JPEG files

    def rng(self, *key: str | int) -> np.random.Generator:
        """A generator seeded from (seed, task, *key): images do not depend on write order."""
        words = [k if isinstance(k, int) else zlib.crc32(k.encode())
                 for k in (self.task.name, *key)]
        return np.random.default_rng([self.seed, *words])

    def save(self, relative: str, image: np.ndarray, group: str = "") -> str:
        """Write one image at `relative` (a JPEG name); returns the name written. `group`: the
        layout's own group of the image (a DICOM phantom's patient)."""
        if self.dicom is not None:
            return self.dicom.save(self.root, relative, image, JPEG_QUALITY, group)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise DataError(f"could not write phantom image {path}")
        return relative


def write_phantom(task: Task, out_dir: str | Path, per_class: int = 40, seed: int = 0,
                  size: int | None = None, fmt: str = DEFAULT_FORMAT) -> Path:
    """Write the phantom for `task` into an empty `out_dir`; returns the layout root (`out_dir`).

    `per_class` counts images per source class (all of them, including ones a variant leaves
    out); `size` is the short side in pixels; `fmt` jpeg or dicom (`phantom_dicom`). Same
    arguments give byte-identical files.
    """
    try:
        check_format(fmt)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if task.layout not in _LAYOUT_WRITERS:
        raise ConfigError(f"no phantom for layout {task.layout!r}; "
                          f"known: {', '.join(_LAYOUT_WRITERS)}")
    if per_class < MIN_PER_CLASS:
        raise ConfigError(f"per_class must be at least {MIN_PER_CLASS}, got {per_class}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if size is None:
        size = SKIN_DEFAULT_SIZE if task.layout == "ham10000" else DEFAULT_SIZE
    if size < MIN_SIZE:
        raise ConfigError(f"size must be at least {MIN_SIZE} px, got {size}")
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"phantom output {root} exists and is not an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    dicom = None if fmt == "jpeg" else DicomExport(
        task.layout, seed, with_report=per_class >= REPORT_MIN_PER_CLASS)
    _LAYOUT_WRITERS[task.layout](_Writer(task, root, per_class, seed, size, dicom))
    if dicom is not None:  # its patients' pseudonyms, hence its split, the same everywhere
        (root / SALT_FILE).write_text(phantom_salt(task.name, seed))
    marker = _marker_text(task, per_class, seed, size)
    (root / PHANTOM_MARKER).write_text(marker if fmt == "jpeg" else marker + f"format: {fmt}\n")
    return root


def default_phantom_dir(task: Task, per_class: int = 40, seed: int = 0,
                        fmt: str = DEFAULT_FORMAT) -> Path:
    """Where `ensure_phantom` keeps a task's phantom: `<cache>/phantoms/<task>-n<N>-s<seed>`,
    with `-dicom` after it for the DICOM phantom (the JPEG one keeps its name and its caches)."""
    cache = os.environ.get("MEDSWEEP_CACHE") or Path.home() / ".cache" / "medsweep"
    suffix = "" if fmt == DEFAULT_FORMAT else f"-{check_format(fmt)}"
    return Path(cache) / "phantoms" / f"{task.name}-n{per_class}-s{seed}{suffix}"


def ensure_phantom(task: Task, per_class: int = 40, seed: int = 0,
                   fmt: str = DEFAULT_FORMAT) -> Path:
    """The cached phantom's layout root, written once (atomically); always prints the banner."""
    target = default_phantom_dir(task, per_class, seed, fmt)
    if not (target / PHANTOM_MARKER).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            write_phantom(task, tmp, per_class, seed, fmt=fmt)
            os.rename(tmp, target)
        except OSError as exc:  # another process may have renamed its copy first
            if not (target / PHANTOM_MARKER).exists():
                raise DataError(f"cannot create phantom at {target}: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(phantom_banner(task, target), file=sys.stderr)
    return target


def phantom_banner(task: Task, root: Path) -> str:
    """A loud several-line notice that the data in `root` are synthetic."""
    return "\n".join([
        "== SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES ".ljust(78, "="),
        f"  task {task.key}: generated images ({task.synthetic_note}), at {root}",
        "  Scores on these data say nothing about real patients.",
        "=" * 78,
    ])


def _marker_text(task: Task, per_class: int, seed: int, size: int) -> str:
    return (
        "SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES\n\n"
        "Written by MedSweep (orchestrator.data.phantoms) to exercise its pipeline end to end.\n"
        "The images are generated shapes: they are not scans of any person, carry no medical\n"
        "meaning, and nothing trained or measured on them says anything about patients.\n\n"
        f"task: {task.name} (layout {task.layout})\n"
        f"seed: {seed}\nper_class: {per_class}\nsize: {size}\n"
        f"class signal: {task.synthetic_note}\n"
    )


def _look(rng: np.random.Generator, source: str, sources: tuple[str, ...],
          kind: Callable[[str], object] = str) -> str:
    """Usually `source`; in SWAP_FRACTION of draws a source of another kind (label noise)."""
    if rng.random() >= SWAP_FRACTION:
        return source
    others = [s for s in sources if kind(s) != kind(source)]
    return others[int(rng.integers(len(others)))]


def _group_sizes(rng: np.random.Generator, total: int, low: int, high: int) -> list[int]:
    """Random group sizes in [low, high] summing to `total` (the last one trimmed)."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(int(rng.integers(low, high + 1)), total - sum(sizes)))
    return sizes


# --- one writer per layout --------------------------------------------------------------------


def _write_brain(w: _Writer) -> None:
    """`Training|Testing/<class>/T?-<xx>_<NNNN>.jpg`, grayscale; the first ~20% go to Testing."""
    sources = w.task.source_labels
    n_test = max(1, round(w.per_class * TEST_FRACTION))
    for source in sources:
        for i in range(w.per_class):
            rng = w.rng(source, i)
            folder, prefix, number = (("Testing", "Te", i) if i < n_test
                                      else ("Training", "Tr", i - n_test))
            image = draw.paint_brain(rng, _look(rng, source, sources), w.size)
            w.save(f"{folder}/{source}/{prefix}-{source[:2]}_{number:04d}.jpg", image)


def _write_chest(w: _Writer) -> None:
    """`{train,val,test}/<class>/*.jpeg` with real name patterns; patients never straddle splits.

    Two single-image patients per class form the tiny `val` (as in the real release), ~20% of
    images (whole patients) form `test`; 1-4 images per patient.
    """
    n_test = max(1, round(w.per_class * TEST_FRACTION))
    first = 1  # pneumonia file names carry one running index across patients
    for source in w.task.source_labels:
        rng = w.rng(source, "patients")
        patients = ([(1, "val")] * 2
                    + [(n, "train") for n in _group_sizes(rng, w.per_class - 2 - n_test, 1, 4)]
                    + [(n, "test") for n in _group_sizes(rng, n_test, 1, 4)])
        index = 0
        for patient, (count, split) in enumerate(patients, start=1):
            for name in _chest_names(rng, source, patient, count, first):
                image_rng = w.rng(source, index)
                look = _look(image_rng, source, w.task.source_labels)
                w.save(f"{split}/{source}/{name}", draw.paint_chest(image_rng, look, w.size),
                       group=f"{source}/{patient}")
                index += 1
            first += count


def _chest_names(rng: np.random.Generator, source: str, patient: int, count: int,
                 first: int) -> list[str]:
    """`person<K>_<bacteria|virus>_<n>.jpeg` or `[NORMAL2-]IM-<KKKK>-<NNNN>.jpeg`, one patient."""
    if source == "PNEUMONIA":
        kind = ("bacteria", "virus")[int(rng.integers(2))]
        return [f"person{patient}_{kind}_{first + j}.jpeg" for j in range(count)]
    prefix = ("IM", "NORMAL2-IM")[int(rng.integers(2))]
    return [f"{prefix}-{patient + 100:04d}-{j + 1:04d}.jpeg" for j in range(count)]


_LOCATIONS = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
              "foot", "scalp", "neck", "hand")


def _write_skin(w: _Writer) -> None:
    """`HAM10000_metadata.csv` + `HAM10000_images_part_{1,2}/ISIC_<id>.jpg`, 1-3 images a lesion.

    The look (benign or malignant) and the metadata belong to the lesion, shared by its images.
    """
    sources = w.task.source_labels
    malignant = {dx: draw.SKIN_LOOKS[dx][1] for dx in sources}
    lesions = []  # (dx, k, image count, lesion, metadata)
    for dx in sources:
        for k, count in enumerate(_group_sizes(w.rng(dx, "lesions"), w.per_class, 1, 3)):
            rng = w.rng(dx, "lesion", k)
            lesion = draw.make_lesion(rng, _look(rng, dx, sources, malignant.get))
            lesions.append((dx, k, count, lesion, _lesion_metadata(rng, malignant[dx])))
    order = w.rng("ids")  # real ids are not grouped by class
    n_images = sum(count for _, _, count, _, _ in lesions)
    image_numbers = iter(24306 + order.permutation(n_images))
    first_of_part_2 = 24306 + (n_images + 1) // 2
    rows = []
    lesion_numbers = order.permutation(len(lesions))
    for (dx, k, count, lesion, meta), lesion_number in zip(lesions, lesion_numbers):
        for j in range(count):
            number = int(next(image_numbers))
            image_id = f"ISIC_{number:07d}"
            part = 1 if number < first_of_part_2 else 2
            image = draw.paint_skin(w.rng(dx, "image", k, j), lesion, w.size)
            w.save(f"HAM10000_images_part_{part}/{image_id}.jpg", image, group=f"{dx}/{k}")
            rows.append({"lesion_id": f"HAM_{lesion_number:07d}", "image_id": image_id,
                         "dx": dx, **meta})
    pd.DataFrame(rows, columns=HAM_COLUMNS).to_csv(w.root / "HAM10000_metadata.csv", index=False)


def _lesion_metadata(rng: np.random.Generator, malignant: bool) -> dict:
    """Per-lesion metadata in HAM10000's vocabulary (malignant diagnoses are histopathology)."""
    dx_type = "histo" if malignant else str(rng.choice(["follow_up", "consensus", "histo"]))
    return {"dx_type": dx_type, "age": float(rng.integers(2, 18) * 5),
            "sex": str(rng.choice(["male", "female"])), "localization": str(rng.choice(_LOCATIONS))}


_SMEAR_NAMES = {"Benign": "WBC-Benign-{:03d}.jpg", "Early": "WBC-Malignant-Early-{:03d}.jpg",
                "Pre": "WBC-Malignant-Pre-{:03d}.jpg", "Pro": "WBC-Malignant-Pro-{:03d}.jpg"}


def _write_smear(w: _Writer) -> None:
    """`Original/<class>/WBC-...-NNN.jpg`, colour (the derived `Segmented/` copy is not written)."""
    sources = w.task.source_labels
    for source in sources:
        for i in range(w.per_class):
            rng = w.rng(source, i)
            image = draw.paint_smear(rng, _look(rng, source, sources), w.size)
            w.save(f"Original/{source}/{_SMEAR_NAMES[source].format(i + 1)}", image)


def _write_shapes(w: _Writer) -> None:
    """One folder per class (`disc`, `ring`, `square`), colour."""
    for cls in FOLDER_CLASSES:
        for i in range(w.per_class):
            rng = w.rng(cls, i)
            image = draw.paint_shape(rng, _look(rng, cls, FOLDER_CLASSES), w.size)
            w.save(f"{cls}/{cls}_{i:04d}.jpg", image)


def _write_multihead(w: _Writer) -> None:
    """`labels.csv` (path,shape,texture,size,group) + `images/NNNNN.jpg`, colour.

    `per_class` images per shape, 1-2 per object (a group: the same token at another pose);
    textures are dealt evenly over each shape's objects, sizes drawn uniformly in SIZE_MM, so
    shape, texture and size are independent. No split column: the splitter decides.
    """
    tokens = []  # (shape, k, image count, token)
    for shape in SHAPES:
        rng = w.rng(shape, "objects")
        counts = _group_sizes(rng, w.per_class, 1, 2)
        start = int(rng.integers(len(TEXTURES)))
        deal = rng.permutation(len(counts))
        for k, count in enumerate(counts):
            texture = TEXTURES[(start + int(deal[k])) % len(TEXTURES)]
            token_rng = w.rng(shape, "object", k)
            diameter = round(float(token_rng.uniform(*SIZE_MM)), 2)
            tokens.append((shape, k, count, draw.make_token(token_rng, shape, texture, diameter)))
    order = w.rng("ids")  # file and group numbers are not grouped by shape
    image_numbers = iter(order.permutation(sum(count for _, _, count, _ in tokens)))
    rows = []
    for (shape, k, count, token), number in zip(tokens, order.permutation(len(tokens))):
        for j in range(count):
            name = w.save(f"images/{int(next(image_numbers)):05d}.jpg",
                          draw.paint_token(w.rng(shape, "image", k, j), token, w.size),
                          group=f"obj{int(number):04d}")
            rows.append({"path": name, "shape": shape, "texture": token.texture,
                         "size": f"{token.diameter * draw.FIELD_MM:.2f}",
                         "group": f"obj{int(number):04d}"})
    frame = pd.DataFrame(rows, columns=MULTIHEAD_COLUMNS).sort_values("path")
    frame.to_csv(w.root / "labels.csv", index=False)


_LAYOUT_WRITERS: dict[str, Callable[[_Writer], None]] = {
    "brain_mri": _write_brain,
    "ham10000": _write_skin,
    "blood_cell_all": _write_smear,
    "chest_xray": _write_chest,
    "folder": _write_shapes,
    "multihead_csv": _write_multihead,
}
