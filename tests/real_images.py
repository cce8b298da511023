"""Real images that installed packages ship (no one here drew them), and copies made of them:
what the duplicate check is measured on beside the phantoms.

- `digits`: scikit-learn's 1,797 handwritten digits (8x8, 17 gray levels), upscaled: ten
  classes of very alike, distinct images, the hardest case for a near-copy test;
- `faces`: scikit-image's LFW subset (200 25x25 crops, faces and non-faces);
- `windows`: windows of scikit-image's and scikit-learn's photographs (retina, histology,
  cells, a telescope field, people, objects, textures), tiled without overlap at two scales,
  each also mirrored: distinct by construction.

`COPIES` are the edits a data set's duplicates carry: re-encodings, resizes, re-exposures,
small crops and shifts, format and bit-depth changes.
"""
from __future__ import annotations

import cv2
import numpy as np

PHOTOS = ("retina", "immunohistochemistry", "cell", "hubble_deep_field", "astronaut", "camera",
          "coffee", "rocket", "chelsea", "coins", "moon", "brick", "grass", "gravel", "clock",
          "page", "text", "microaneurysms")
DIGIT_SIZE = 64  # digits are written at this size (bicubic from 8x8)


def digits() -> tuple[list[np.ndarray], np.ndarray]:
    """(images as uint8 gray, labels) of scikit-learn's digits, 0-16 stretched to 0-255."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [cv2.resize((im * 255 / 16).astype(np.uint8), (DIGIT_SIZE, DIGIT_SIZE),
                         interpolation=cv2.INTER_CUBIC) for im in data.images]
    return images, data.target


def faces() -> list[np.ndarray]:
    from skimage.data import lfw_subset

    return [cv2.resize((im * 255).astype(np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
            for im in lfw_subset()]


def photos() -> dict[str, np.ndarray]:
    """Name -> BGR or gray uint8 photograph."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = {}
    for name in PHOTOS:
        im = getattr(sd, name)()
        out[name] = cv2.cvtColor(im, cv2.COLOR_RGB2BGR) if im.ndim == 3 else im
    for name, im in zip(("china", "flower"), load_sample_images().images):
        out[name] = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
    return out


def windows(min_std: float = 8.0) -> list[np.ndarray]:
    """Non-overlapping windows of every photograph at two sizes (1/2 and 1/4 of its shorter
    side), each also mirrored; windows with almost no texture (std < `min_std`: a patch of
    sky or background, which any two such patches share) are left out."""
    out = []
    for im in photos().values():
        short = min(im.shape[:2])
        for size in (short // 2, short // 4):
            for y in range(0, im.shape[0] - size + 1, size):
                for x in range(0, im.shape[1] - size + 1, size):
                    win = np.ascontiguousarray(im[y:y + size, x:x + size])
                    gray = win if win.ndim == 2 else cv2.cvtColor(win, cv2.COLOR_BGR2GRAY)
                    if gray.std() < min_std:
                        continue
                    out += [win, np.ascontiguousarray(win[:, ::-1])]
    return out


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _exposed(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _crop(image: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[round(h * top):h - round(h * bottom),
                                      round(w * left):w - round(w * right)])


def _sixteen_bit(image: np.ndarray) -> np.ndarray:
    """Saved as a 16-bit PNG (x257) and read back as the readers read it."""
    from orchestrator.data.cache import decode_bytes

    _, buf = cv2.imencode(".png", image.astype(np.uint16) * 257)
    return decode_bytes(buf.tobytes())


def _eight_bit_of_sixteen(image: np.ndarray) -> np.ndarray:
    """A 12-bit export (as a scanner writes it) read back, against its 8-bit original."""
    from orchestrator.data.cache import decode_bytes

    _, buf = cv2.imencode(".png", (image.astype(np.uint16) * 16 + 3))
    return decode_bytes(buf.tobytes())


COPIES = {
    "jpeg70": lambda x: _jpeg(x, 70), "jpeg85": lambda x: _jpeg(x, 85),
    "jpeg95": lambda x: _jpeg(x, 95),
    "resize90": lambda x: cv2.resize(x, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA),
    "resize110": lambda x: cv2.resize(x, None, fx=1.1, fy=1.1, interpolation=cv2.INTER_LINEAR),
    "darker10": lambda x: _exposed(x, 0.9), "brighter10": lambda x: _exposed(x, 1.1),
    "crop3": lambda x: _crop(x, 0.03, 0.03, 0.03, 0.03),
    "shift4": lambda x: _crop(x, 0.0, 0.04, 0.04, 0.0),
    "png16": _sixteen_bit, "png12": _eight_bit_of_sixteen,
    "jpeg80_resize90": lambda x: _jpeg(cv2.resize(x, None, fx=0.9, fy=0.9,
                                                  interpolation=cv2.INTER_AREA), 80),
}


def write_digits_folder(root, per_class: int | None = None):
    """scikit-learn's digits as a folder of class folders of PNGs (`<digit>/x_<i>.png`), the
    layout of a user's own data set: real, alike, distinct images with no copies."""
    from pathlib import Path

    root = Path(root)
    images, labels = digits()
    taken: dict[int, int] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if per_class is not None and taken.get(int(label), 0) >= per_class:
            continue
        taken[int(label)] = taken.get(int(label), 0) + 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"x_{i}.png"), image)
    return root
