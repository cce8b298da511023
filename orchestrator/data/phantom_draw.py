"""Pixels for the synthetic phantoms: one painter per task, `paint_*(rng, look, size) -> uint8`.

Each painter draws a class-specific feature (a `look`, one of the task's source labels) among
distractors, smooth background variation, noise and random brightness/contrast. Features are
sized relative to the image and coarse enough to survive downscaling to 64 px, and they do not
depend on orientation, so the flips and rotations a task allows keep the class intact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

Rng = np.random.Generator
Value = float | tuple[float, float, float]


# --- shared drawing helpers -------------------------------------------------------------------


def _smooth_field(rng: Rng, h: int, w: int, cells: int = 5) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: uneven illumination and tissue texture."""
    small = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _blend(img: np.ndarray, mask: np.ndarray, value: Value, alpha: float = 1.0) -> None:
    """Paint `value` into `img` where `mask` (0..1) is set, in place."""
    m = (mask * alpha)[..., None] if img.ndim == 3 else mask * alpha
    img *= 1.0 - m
    img += m * np.asarray(value, np.float32)


def _mask(h: int, w: int, draw: Callable[[np.ndarray], None], blur: float = 0.0) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    draw(canvas)
    mask = canvas.astype(np.float32) / 255.0
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur > 0 else mask


def _ellipse(h: int, w: int, center, axes, angle: float = 0.0, thickness: int = -1,
             blur: float = 0.0) -> np.ndarray:
    c = (int(round(center[0])), int(round(center[1])))
    a = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    return _mask(h, w, lambda m: cv2.ellipse(m, c, a, angle, 0, 360, 255, thickness,
                                             cv2.LINE_AA), blur)


def _polygon(h: int, w: int, points: np.ndarray, blur: float = 0.0) -> np.ndarray:
    pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
    return _mask(h, w, lambda m: cv2.fillPoly(m, [pts], 255, cv2.LINE_AA), blur)


def _blob_outline(rng: Rng, irregularity: float, n: int = 40) -> np.ndarray:
    """A closed unit outline (n x 2); irregularity 0 is a circle, 0.3 is ragged."""
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 7):  # a few random low harmonics of the radius
        phase = rng.uniform(0, 2 * np.pi)
        radius += irregularity / k ** 0.5 * rng.uniform(-1, 1) * np.cos(k * theta + phase)
    return np.stack([np.cos(theta) * radius, np.sin(theta) * radius], axis=1)


def _finish(img: np.ndarray, rng: Rng, noise: float, blur: float) -> np.ndarray:
    """Slight blur, random contrast and brightness, sensor noise; back to uint8."""
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img = (img - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-15, 15)
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- brain MRI (grayscale) --------------------------------------------------------------------


def paint_brain(rng: Rng, look: str, s: int) -> np.ndarray:
    """Axial slice: head, skull, ventricles, faint spots; the lesion depends on the tumour type.

    glioma: large ragged ring-enhancing mass with a dark core; meningioma: round homogeneous
    mass against the skull; pituitary: small bright nodule by the centre; notumor: none. Lesions
    are the brightest thing in the slice, distractor spots are small and dimmer.
    """
    img = np.zeros((s, s), np.float32)
    # Head position, size and tilt vary as much as real slices do, so two tumour-free slices
    # are not near-duplicates under the cross-split duplicate check.
    cx, cy = s * (0.5 + rng.uniform(-0.07, 0.07)), s * (0.5 + rng.uniform(-0.06, 0.06))
    ax, ay = s * rng.uniform(0.32, 0.41), s * rng.uniform(0.38, 0.46)
    tilt = rng.uniform(-20, 20)
    head = _ellipse(s, s, (cx, cy), (ax, ay), tilt)
    _blend(img, head, rng.uniform(70, 95))
    img += head * _smooth_field(rng, s, s, 6) * 12
    _blend(img, _ellipse(s, s, (cx, cy), (ax, ay), tilt, max(1, round(s * 0.025))),
           rng.uniform(130, 160))
    for side in (-1, 1):  # ventricles
        v = (cx + side * s * rng.uniform(0.03, 0.05), cy + s * rng.uniform(-0.04, 0.02))
        _blend(img, _ellipse(s, s, v, (s * rng.uniform(0.02, 0.04), s * rng.uniform(0.05, 0.09)),
                             side * rng.uniform(5, 25), blur=s * 0.01), 30)
    for _ in range(rng.integers(0, 3)):  # distractors: faint small spots anywhere in the brain
        r, a = rng.uniform(0, 0.8), rng.uniform(0, 2 * np.pi)
        p = (cx + r * ax * np.cos(a), cy + r * ay * np.sin(a))
        _blend(img, _ellipse(s, s, p, (s * rng.uniform(0.015, 0.03),) * 2, blur=s * 0.01),
               rng.uniform(110, 135))
    _draw_tumour(img, rng, look, (cx, cy), (ax, ay), s)
    return _finish(img, rng, noise=6.0, blur=s * 0.006)


def _draw_tumour(img: np.ndarray, rng: Rng, look: str, c, axes, s: int) -> None:
    if look == "glioma":
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.35)
        p = np.array([c[0] + r * axes[0] * np.cos(a), c[1] + r * axes[1] * np.sin(a)])
        outline = _blob_outline(rng, 0.3) * s * rng.uniform(0.15, 0.2) + p
        _blend(img, _polygon(s, s, outline, blur=s * 0.01), rng.uniform(235, 255))
        _blend(img, _polygon(s, s, (outline - p) * 0.55 + p, blur=s * 0.015), rng.uniform(50, 80))
    elif look == "meningioma":
        a, r = rng.uniform(0, 2 * np.pi), s * rng.uniform(0.11, 0.14)
        p = (c[0] + (axes[0] - r * 0.7) * np.cos(a), c[1] + (axes[1] - r * 0.7) * np.sin(a))
        _blend(img, _ellipse(s, s, p, (r, r * rng.uniform(0.8, 1.0)), np.degrees(a),
                             blur=s * 0.006), rng.uniform(225, 250))
    elif look == "pituitary":
        p = (c[0] + s * rng.uniform(-0.03, 0.03), c[1] + s * rng.uniform(0.04, 0.12))
        _blend(img, _ellipse(s, s, p, (s * rng.uniform(0.05, 0.065),) * 2, blur=s * 0.006),
               rng.uniform(235, 255))


# --- chest X-ray (grayscale) ------------------------------------------------------------------


def paint_chest(rng: Rng, look: str, s: int) -> np.ndarray:
    """Frontal chest film: dark lungs, spine, heart, ribs; pneumonia adds patchy opacities."""
    img = np.full((s, s), 150.0, np.float32) + _smooth_field(rng, s, s, 4) * 15
    img += np.linspace(-20, 25, s, dtype=np.float32)[:, None]  # denser towards the abdomen
    lungs = []
    for side in (-1, 1):
        center = (s * (0.5 + side * rng.uniform(0.18, 0.22)), s * rng.uniform(0.42, 0.48))
        axes = (s * rng.uniform(0.13, 0.16), s * rng.uniform(0.26, 0.31))
        lungs.append((center, axes))
        _blend(img, _ellipse(s, s, center, axes, side * rng.uniform(0, 8), blur=s * 0.03),
               rng.uniform(45, 70))
    _blend(img, _ellipse(s, s, (s * 0.5, s * 0.5), (s * 0.035, s * 0.5), blur=s * 0.01), 175)
    heart = (s * rng.uniform(0.54, 0.6), s * rng.uniform(0.6, 0.66))
    _blend(img, _ellipse(s, s, heart, (s * rng.uniform(0.12, 0.16), s * 0.12), blur=s * 0.03), 150)
    for k in range(7):  # ribs: faint arcs over both lungs
        y = s * (0.2 + 0.09 * k + rng.uniform(-0.01, 0.01))
        rib = _mask(s, s, lambda m, y=y: cv2.ellipse(
            m, (s // 2, int(y)), (int(s * 0.38), int(s * 0.12)), 0, 200, 340, 255,
            max(1, round(s * 0.012)), cv2.LINE_AA), blur=s * 0.008)
        _blend(img, rib, 160, alpha=0.2)
    if look == "PNEUMONIA":
        for _ in range(rng.integers(4, 8)):
            (lx, ly), (la, lb) = lungs[rng.integers(0, 2)]
            p = (lx + la * rng.uniform(-0.6, 0.6), ly + lb * rng.uniform(-0.3, 0.7))
            patch = _polygon(s, s, _blob_outline(rng, 0.3) * s * rng.uniform(0.06, 0.1) + p,
                             blur=s * 0.02)
            _blend(img, patch, rng.uniform(175, 210))
    return _finish(img, rng, noise=7.0, blur=s * 0.006)


# --- dermoscopy (colour, 4:3) -----------------------------------------------------------------

# dx code -> (BGR base colour, malignant look)
SKIN_LOOKS: dict[str, tuple[tuple[float, float, float], bool]] = {
    "nv": ((55, 85, 135), False),
    "bkl": ((95, 135, 175), False),
    "df": ((80, 105, 150), False),
    "vasc": ((95, 60, 165), False),
    "mel": ((35, 45, 80), True),
    "bcc": ((120, 115, 185), True),
    "akiec": ((70, 85, 155), True),
}
_BLOTCHES = ((20, 20, 25), (140, 115, 95), (60, 55, 165), (30, 40, 60))  # black, blue-grey, red


@dataclass(frozen=True)
class Lesion:
    """One lesion's fixed appearance; several images of it vary only in pose and exposure."""

    outline: np.ndarray  # unit outline
    colour: tuple[float, float, float]
    radius: float  # fraction of image height
    blotches: tuple[tuple[float, float, float, int], ...]  # (x, y, radius) in unit coords, colour


def make_lesion(rng: Rng, dx: str) -> Lesion:
    base, malignant = SKIN_LOOKS[dx]
    colour = tuple(float(c) * rng.uniform(0.85, 1.15) for c in base)
    blotches = tuple((rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.4),
                      int(rng.integers(0, len(_BLOTCHES))))
                     for _ in range(rng.integers(3, 6) if malignant else 0))
    return Lesion(_blob_outline(rng, 0.35 if malignant else 0.05), colour,
                  rng.uniform(0.22, 0.32) if malignant else rng.uniform(0.16, 0.26), blotches)


def paint_skin(rng: Rng, lesion: Lesion, h: int) -> np.ndarray:
    """Skin, vignette and hairs around the lesion, at a random pose and exposure."""
    w = round(h * 4 / 3)
    tone = np.array([rng.uniform(150, 190), rng.uniform(165, 200), rng.uniform(205, 235)])
    img = np.ones((h, w, 3), np.float32) * tone + (_smooth_field(rng, h, w, 4) * 12)[..., None]
    rim = np.hypot(w, h) / 2 * rng.uniform(0.85, 1.0)  # the dermatoscope's dark circular rim
    _blend(img, 1.0 - _ellipse(h, w, (w / 2, h / 2), (rim, rim), blur=h * 0.05), (20, 20, 25))
    angle, scale = rng.uniform(0, 2 * np.pi), h * lesion.radius * rng.uniform(0.9, 1.1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    center = np.array([w / 2, h / 2]) + rng.uniform(-0.08, 0.08, 2) * h
    _blend(img, _polygon(h, w, lesion.outline @ rot.T * scale + center, blur=h * 0.012),
           lesion.colour)
    for x, y, r, k in lesion.blotches:
        p = np.array([x, y]) @ rot.T * scale + center
        _blend(img, _ellipse(h, w, p, (r * scale, r * scale * 0.7), np.degrees(angle),
                             blur=h * 0.02), _BLOTCHES[k], alpha=0.85)
    for _ in range(rng.integers(0, 4)):
        _blend(img, _hair(rng, h, w), (25, 25, 35), alpha=0.8)
    return _finish(img, rng, noise=5.0, blur=h * 0.004)


def _hair(rng: Rng, h: int, w: int) -> np.ndarray:
    """A thin dark curved line crossing part of the image."""
    t = np.linspace(0.0, 1.0, 24)[:, None]
    start, mid, end = rng.uniform(0, 1, (3, 2)) * (w, h)
    pts = (1 - t) ** 2 * start + 2 * t * (1 - t) * mid + t ** 2 * end  # quadratic Bezier
    pts = np.round(pts).astype(np.int32).reshape(-1, 1, 2)
    return _mask(h, w, lambda m: cv2.polylines(m, [pts], False, 255, 1, cv2.LINE_AA))


# --- blood smear (colour) ---------------------------------------------------------------------

# subtype -> (white cells, nucleus radius (fraction of size), cytoplasm / nucleus, texture)
SMEAR_LOOKS = {
    "Benign": (1, 0.07, 1.9, "dense"),
    "Early": (1, 0.16, 1.12, "fine"),
    "Pre": (2, 0.11, 1.25, "coarse"),
    "Pro": (3, 0.1, 1.25, "nucleoli"),
}


def paint_smear(rng: Rng, look: str, s: int) -> np.ndarray:
    """Red cells as distractors; white-cell count, nucleus size and chromatin encode the subtype."""
    img = np.ones((s, s, 3), np.float32) * (rng.uniform(215, 235), rng.uniform(195, 215),
                                            rng.uniform(225, 245))
    img += (_smooth_field(rng, s, s, 4) * 8)[..., None]
    for _ in range(rng.integers(8, 16)):  # red cells with a pale centre
        p, r = rng.uniform(0, s, 2), s * rng.uniform(0.05, 0.075)
        _blend(img, _ellipse(s, s, p, (r, r * rng.uniform(0.85, 1)), blur=s * 0.004),
               (175, 160, 225))
        _blend(img, _ellipse(s, s, p, (r * 0.45,) * 2, blur=s * 0.01), (200, 190, 235), 0.7)
    count, nucleus, cytoplasm, texture = SMEAR_LOOKS[look]
    for _ in range(count):
        _draw_white_cell(img, rng, s, s * nucleus * rng.uniform(0.85, 1.15), cytoplasm, texture)
    return _finish(img, rng, noise=5.0, blur=s * 0.004)


def _draw_white_cell(img: np.ndarray, rng: Rng, s: int, r: float, cytoplasm: float,
                     texture: str) -> None:
    p = rng.uniform(0.2, 0.8, 2) * s
    _blend(img, _ellipse(s, s, p, (r * cytoplasm,) * 2, blur=s * 0.006), (215, 170, 165))
    irregular = 0.25 if texture == "nucleoli" else 0.06
    nucleus = _polygon(s, s, _blob_outline(rng, irregular) * r + p, blur=s * 0.006)
    dark = texture == "dense"
    _blend(img, nucleus, (115, 35, 75) if dark else (150, 70, 115))
    if texture in ("coarse", "nucleoli"):
        grain = np.clip(rng.normal(0, 1, (s // 10 + 1,) * 2), 0, None).astype(np.float32)
        speckle = cv2.resize(grain, (s, s), interpolation=cv2.INTER_LINEAR) * nucleus * 0.7
        _blend(img, np.clip(speckle, 0, 1), (90, 20, 55))
    if texture == "nucleoli":
        for _ in range(rng.integers(2, 4)):
            q = p + rng.uniform(-0.5, 0.5, 2) * r
            _blend(img, _ellipse(s, s, q, (r * 0.18,) * 2, blur=s * 0.004), (200, 150, 185))


# --- user folder (colour shapes) --------------------------------------------------------------


def paint_shape(rng: Rng, look: str, s: int) -> np.ndarray:
    """A bright disc, square or ring of random hue and size on a dark noisy background."""
    img = np.ones((s, s, 3), np.float32) * rng.uniform(15, 90, 3)
    img += (_smooth_field(rng, s, s, 4) * 20)[..., None]
    colour = tuple(rng.uniform(150, 255, 3))
    p, r = rng.uniform(0.38, 0.62, 2) * s, s * rng.uniform(0.18, 0.27)
    if look == "square":
        box = cv2.boxPoints(((p[0], p[1]), (1.7 * r, 1.7 * r), rng.uniform(0, 90)))
        shape = _polygon(s, s, box)
    else:
        shape = _ellipse(s, s, p, (r, r), thickness=-1 if look == "disc" else max(1, round(r / 3)))
    _blend(img, shape, colour)
    for _ in range(rng.integers(2, 6)):  # specks
        speck = _ellipse(s, s, rng.uniform(0, s, 2), (s * 0.02,) * 2)
        _blend(img, speck, tuple(rng.uniform(0, 255, 3)))
    return _finish(img, rng, noise=8.0, blur=s * 0.004)


# --- multi-head (colour: outline, fill and size of one object) --------------------------------

FIELD_MM = 100.0  # the image's side, in mm: a token's `diameter` is a fraction of it


@dataclass(frozen=True)
class Token:
    """One object's fixed facts; two images of it differ in pose, lighting and noise only."""

    shape: str  # disc, square, triangle, ring: the outline
    texture: str  # smooth, stripes, dots: the fill
    diameter: float  # of the circle through the outline's corners, as a fraction of the side
    colour: tuple[float, float, float]
    period: float  # of the stripes or dots, as a fraction of the side


def make_token(rng: Rng, shape: str, texture: str, diameter_mm: float) -> Token:
    return Token(shape, texture, diameter_mm / FIELD_MM, tuple(rng.uniform(150, 255, 3)),
                 rng.uniform(0.075, 0.09))


def paint_token(rng: Rng, token: Token, s: int) -> np.ndarray:
    """The token at a random place and angle on a dark uneven background, with a few specks.

    The whole outline stays inside the image, so its size can be read; the fill is the
    token's colour (smooth), with dark bands across it (stripes) or a grid of dark dots (dots).
    """
    img = np.ones((s, s, 3), np.float32) * rng.uniform(15, 70, 3)
    img += (_smooth_field(rng, s, s, 4) * 15)[..., None]
    r = token.diameter * s / 2
    margin = r + s * 0.03
    p = rng.uniform(margin, s - margin, 2)
    angle = rng.uniform(0, 360)
    shape = _token_mask(token.shape, s, p, r, angle)
    fill = np.ones((s, s), np.float32)
    if token.texture != "smooth":
        fill = 1.0 - 0.7 * _texture(rng, token.texture, s, token.period * s)
    colour = np.asarray(token.colour, np.float32) * rng.uniform(0.9, 1.1)
    img *= 1.0 - shape[..., None]
    img += shape[..., None] * fill[..., None] * colour
    for _ in range(rng.integers(0, 3)):  # specks: smaller than any token, larger than a dot
        speck = _ellipse(s, s, rng.uniform(0, s, 2), (s * rng.uniform(0.012, 0.02),) * 2)
        _blend(img, speck, tuple(rng.uniform(60, 200, 3)), alpha=0.8)
    return _finish(img, rng, noise=6.0, blur=s * 0.004)


def _token_mask(shape: str, s: int, p: np.ndarray, r: float, angle: float) -> np.ndarray:
    if shape == "disc":
        return _ellipse(s, s, p, (r, r))
    if shape == "ring":
        return np.clip(_ellipse(s, s, p, (r, r)) - _ellipse(s, s, p, (r * 0.5, r * 0.5)), 0, 1)
    corners = 4 if shape == "square" else 3
    theta = np.radians(angle) + np.arange(corners) * 2 * np.pi / corners
    return _polygon(s, s, p + r * np.stack([np.cos(theta), np.sin(theta)], axis=1))


def _texture(rng: Rng, texture: str, s: int, period: float) -> np.ndarray:
    """A (s, s) pattern in [0, 1] at a random angle and phase: 1 where the fill is dark."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    a = rng.uniform(0, np.pi)
    u = (x * np.cos(a) + y * np.sin(a)) / period + rng.uniform(0, 1)
    if texture == "stripes":
        return (np.sin(2 * np.pi * u) > 0).astype(np.float32)
    v = (-x * np.sin(a) + y * np.cos(a)) / period + rng.uniform(0, 1)
    du, dv = u - np.round(u), v - np.round(v)
    return (np.hypot(du, dv) < 0.28).astype(np.float32)
