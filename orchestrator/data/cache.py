"""Decode and preprocess every image once, into a memory-mapped uint8 array on disk.

The cache is keyed by the data's content fingerprint, the resolution and the preprocessing, never
by labels or splits: re-splitting with another seed, or another trial at the same resolution,
loads the array instead of decoding again. `preprocess_image` is the one function that turns
pixels into model input; the serving path calls it too, so train and serve never diverge.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from orchestrator.data import dicom
from tasks.base import Preprocessing

CACHE_VERSION = 2  # bump when decoding or preprocessing changes: old caches are then ignored


@dataclass
class CachedImages:
    """A decoded, preprocessed image set and where it came from."""

    images: np.ndarray  # (N, R, R, 3) uint8 RGB, read-only memmap
    ok: np.ndarray  # (N,) bool: the file decoded
    failed: list[str]  # paths that did not decode (their rows in `images` are black)
    key: str
    hit: bool  # loaded from the cache without decoding anything
    directory: Path
    reasons: dict[str, str] = field(default_factory=dict)  # failed path -> why it did not decode


NOT_AN_IMAGE = "not an image (neither JPEG, PNG, BMP, TIFF nor DICOM)"
READING = Preprocessing()  # how files are read when no task says otherwise


def decode_checked(data: bytes | np.ndarray, spec: Preprocessing = READING
                   ) -> tuple[np.ndarray | None, str]:
    """Encoded image -> (uint8 gray (H, W) or BGR (H, W, 3), "") or (None, why not).

    DICOM (by its magic, whatever the file's name) goes through `dicom.read_dicom` with the
    spec's window and frame; everything else through OpenCV."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        return None, "empty file"
    if dicom.is_dicom(buf[:dicom.MAGIC_OFFSET + len(dicom.MAGIC)].tobytes()):
        try:
            return dicom.read_dicom(buf.tobytes(), spec.dicom_window, spec.dicom_frame), ""
        except dicom.UnreadableImage as err:
            return None, str(err)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None, NOT_AN_IMAGE
    if img is None or img.size == 0:
        return None, NOT_AN_IMAGE
    if img.dtype != np.uint8:
        # 16-bit medical exports often use only 10-12 bits: a fixed shift would leave them black.
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img, ""


def decode_bytes(data: bytes | np.ndarray, spec: Preprocessing = READING) -> np.ndarray | None:
    """Like `decode_checked`, without the reason; None if it is not an image."""
    return decode_checked(data, spec)[0]


def decode_file(path: str | os.PathLike, spec: Preprocessing = READING
                ) -> tuple[np.ndarray | None, str]:
    """`decode_checked` of a file (non-ASCII paths work); a missing file says so."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        return None, "no such file"
    except (OSError, ValueError) as err:
        return None, f"not readable ({err.__class__.__name__})"
    return decode_checked(data, spec)


def decode_image(path: str | os.PathLike, spec: Preprocessing = READING) -> np.ndarray | None:
    """Like `decode_file`, without the reason; None if missing or unreadable."""
    return decode_file(path, spec)[0]


def preprocess_image(img: np.ndarray, spec: Preprocessing, resolution: int) -> np.ndarray:
    """Decoded gray/BGR image -> (R, R, 3) uint8 RGB: grayscale, CLAHE, resize, RGB.

    Resizing before the RGB conversion gives the same pixels (both act per channel) and resizes
    a gray image once instead of three times.
    """
    if img.ndim == 3 and spec.grayscale:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if spec.clahe:
        clahe = cv2.createCLAHE(clipLimit=spec.clahe_clip,
                                tileGridSize=(spec.clahe_tiles, spec.clahe_tiles))
        if img.ndim == 2:
            img = clahe.apply(img)
        else:
            lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
            lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
            img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    shrinking = img.shape[0] > resolution or img.shape[1] > resolution
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    img = cv2.resize(img, (resolution, resolution), interpolation=interpolation)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)


def cache_root() -> Path:
    """`$MEDSWEEP_CACHE` (read now, not at import) or `~/.cache/medsweep`."""
    env = os.environ.get("MEDSWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "medsweep"


def cache_key(content_fp: str, resolution: int, spec: Preprocessing) -> str:
    """What makes two image arrays identical: content, resolution, preprocessing, code version."""
    text = f"v{CACHE_VERSION}|{content_fp}|{resolution}|{spec.key()}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load_or_build(paths: list[str], spec: Preprocessing, resolution: int, content_fp: str,
                  root: str | Path | None = None, workers: int | None = None,
                  log: Callable[[str], None] = print) -> CachedImages:
    """The cached array for these images, decoding them (in parallel) only on a miss."""
    key = cache_key(content_fp, resolution, spec)
    directory = Path(root or cache_root()) / "images" / key
    what = f"{len(paths)} images ({resolution} px, {spec.key()})"
    if (directory / "meta.json").exists():
        cached = _load(directory, paths, key, hit=True)
        log(f"cache hit: {what} from {directory}")
        return cached
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    _build(directory, paths, spec, resolution, content_fp, workers)
    cached = _load(directory, paths, key, hit=False)
    log(f"decoded {what} in {time.perf_counter() - start:.1f} s with {workers} threads "
        f"-> {directory}" + (f" ({len(cached.failed)} failed)" if cached.failed else ""))
    return cached


def _load(directory: Path, paths: list[str], key: str, hit: bool) -> CachedImages:
    images = np.load(directory / "images.npy", mmap_mode="r")
    ok = np.load(directory / "ok.npy")
    if len(ok) != len(paths):
        raise ValueError(f"cache {directory} holds {len(ok)} images, not {len(paths)}: "
                         "content_fp was not computed from these paths")
    failed = [p for p, good in zip(paths, ok) if not good]
    reasons_file = directory / "failed.json"
    reasons = json.loads(reasons_file.read_text()) if reasons_file.exists() else {}
    return CachedImages(images=images, ok=ok, failed=failed, key=key, hit=hit,
                        directory=directory, reasons=reasons)


def _build(directory: Path, paths: list[str], spec: Preprocessing, resolution: int,
           content_fp: str, workers: int) -> None:
    """Decode into a private temp dir, then rename it into place: never a half-written cache."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(paths), resolution, resolution, 3))

        def one(i: int) -> str:
            img, reason = decode_file(paths[i], spec)
            if img is None:
                return reason or NOT_AN_IMAGE
            images[i] = preprocess_image(img, spec, resolution)
            return ""

        with ThreadPoolExecutor(workers) as pool:
            reasons = list(pool.map(one, range(len(paths))))
        ok = np.array([not r for r in reasons], dtype=bool)
        images.flush()
        del images
        np.save(tmp / "ok.npy", ok)
        (tmp / "failed.json").write_text(json.dumps(
            {p: r for p, r in zip(paths, reasons) if r}, indent=1) + "\n")
        (tmp / "paths.txt").write_text("".join(f"{p}\n" for p in paths), encoding="utf-8",
                                       errors="surrogateescape")
        meta = {"version": CACHE_VERSION, "content_fp": content_fp, "resolution": resolution,
                "preprocessing": spec.key(), "images": len(paths), "failed": int((~ok).sum())}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, directory)
    except OSError:
        if not (directory / "meta.json").exists():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
