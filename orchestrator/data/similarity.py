"""Whether two images are one picture, at the pixel level: the verification step of the
duplicate check (`duplicates.py` finds the candidate pairs and clusters the verified ones).

The second image is aligned to the first (SCALES per axis, refined by half a step, shifts up to
MARGIN px: a crop of a few percent), both are blurred by BLUR px, and their normalised
cross-correlation over the overlap is credited with TEXTURE_CREDIT of the pair's own fine
texture: a copy of a textured image loses more to re-encoding than one of a smooth image. The
constants were chosen from `bench/duplicates.py` (`docs/benchmarks.md`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

SCALES = (0.94, 1.0, 1.06)  # per axis: a crop of up to ~6% is a zoom of the rest
MARGIN = 6  # px of the 64 px decode: shifts up to ~9%
BLUR = 1.0  # px: re-sampling and JPEG noise mostly lives below this scale
TEXTURE_CREDIT = 0.2  # of the pair's fine texture (1 - NCC of an image with its blurred self)
MAX_GAIN = 2.0  # contrast ratio: a re-exposure or a 16-bit file's stretch stays within
MIN_OVERLAP = 0.5  # of the decode's pixels, after alignment
CHUNK = 64  # images converted to float at a time
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB, as cv2's RGB2GRAY


def gray_decodes(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB (a memmap is read chunk by chunk) -> (N, H, W) float32 gray."""
    out = np.empty(images.shape[:3], dtype=np.float32)
    for start in range(0, len(images), CHUNK):
        out[start:start + CHUNK] = np.asarray(images[start:start + CHUNK],
                                              dtype=np.float32) @ GRAY_WEIGHTS
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How surely `b` is a copy of `a` (two (H, W) float32 gray decodes): 1 for the same
    picture, lower for another one, 0 where no alignment overlaps or the contrast differs by
    more than MAX_GAIN. Symmetric up to alignment error."""
    if a.std() == 0 or b.std() == 0:  # a blank image is alike every other blank one
        return 0.0
    warp = _alignment(a, b)
    h, w = a.shape
    moved = cv2.warpAffine(b, warp, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones_like(b), warp, (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    if mask.sum() < MIN_OVERLAP * a.size:
        return 0.0
    sa, sb = a[mask].std(), moved[mask].std()
    if sa == 0 or sb == 0 or not 1 / MAX_GAIN <= sb / sa <= MAX_GAIN:
        return 0.0
    blur_a, blur_b = (cv2.GaussianBlur(x, (0, 0), BLUR) for x in (a, moved))
    texture = (1 - _ncc(a, blur_a, mask)) + (1 - _ncc(moved, blur_b, mask))
    shortfall = (1 - _ncc(blur_a, blur_b, mask)) - TEXTURE_CREDIT * texture
    return float(np.clip(1 - max(shortfall, 0.0), 0.0, 1.0))


def _ncc(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    x, y = x[mask] - x[mask].mean(), y[mask] - y[mask].mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _alignment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 warp (b's pixels -> a's) that best correlates b's centre with a: scales per axis
    on the SCALES grid, then refined by half a step, and shifts up to MARGIN px."""
    best = _best_warp(a, b, [(sx, sy) for sx in SCALES for sy in SCALES])
    step = (SCALES[1] - SCALES[0]) / 2
    sx, sy = best[1]
    return _best_warp(a, b, [(sx + dx, sy + dy) for dx in (-step, 0, step)
                             for dy in (-step, 0, step) if dx or dy], best)[2]


def _best_warp(a: np.ndarray, b: np.ndarray, scales: list[tuple[float, float]],
               best: tuple | None = None) -> tuple[float, tuple[float, float], np.ndarray]:
    h, w = a.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    best = best or (-np.inf, (1.0, 1.0), np.float32([[1, 0, 0], [0, 1, 0]]))
    for sx, sy in scales:
        scale = np.float32([[sx, 0, cx - sx * cx], [0, sy, cy - sy * cy]])
        scaled = cv2.warpAffine(b, scale, (w, h), flags=cv2.INTER_LINEAR)
        found = cv2.matchTemplate(a, scaled[MARGIN:h - MARGIN, MARGIN:w - MARGIN],
                                  cv2.TM_CCOEFF_NORMED)
        _, value, _, (x, y) = cv2.minMaxLoc(found)
        if value > best[0]:
            warp = scale.copy()
            warp[0, 2] += x - MARGIN
            warp[1, 2] += y - MARGIN
            best = (value, (sx, sy), warp)
    return best


def similarities(gray: np.ndarray, a: np.ndarray, b: np.ndarray,
                 workers: int | None = None) -> np.ndarray:
    """`similarity` of each row pair (a[i], b[i]) of (N, H, W) gray decodes; OpenCV releases
    the GIL, so threads share the work."""
    if not len(a):
        return np.zeros(0)
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return np.fromiter(pool.map(lambda ij: similarity(gray[ij[0]], gray[ij[1]]),
                                    zip(a, b), chunksize=64), dtype=np.float64, count=len(a))
