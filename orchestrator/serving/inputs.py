"""What goes into the served model: one image per row, as encoded files (bytes, or their
base64 text, which is what a REST client sends), a uint8 tensor, or local paths, decoded the way
the training cache decodes files; and the door's limits, checked before anything is decoded.
Every refusal is an `InputError` naming the row, which the server answers as JSON with status
400."""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np
import pandas as pd

from orchestrator.data import dicom
from orchestrator.data.cache import NOT_AN_IMAGE, READING, decode_checked, decode_file
from tasks.base import Preprocessing

IMAGE, PATH = "image", "path"
DEFAULT_MAX_PIXELS = 50_000_000  # 7,071 px square: far above any scan the models resize down
DEFAULT_MIN_SIDE = 16  # below this a model reads nothing but its own resizing


class InputError(ValueError):
    """Input the model cannot read; the message names the row."""


@dataclass(frozen=True)
class InputLimits:
    """What the door lets in. The pixel count is read from the file's header before any pixel
    is decoded: a 380 KiB PNG can declare 20,000 x 20,000 pixels and decode to 400 MB (1.2 GB as
    colour), enough to take a server's memory. Versioned in the spec (`max_pixels`,
    `min_side`)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1:
            raise ValueError(f"input limits must be >= 1, got max_pixels {self.max_pixels}, "
                             f"min_side {self.min_side}")

    def check(self, width: int, height: int, row: int, what: str = "the image") -> None:
        """Raise InputError naming the row when a `width` x `height` image is out of bounds."""
        if width * height > self.max_pixels:
            raise InputError(f"row {row}: {what} is {width} x {height} pixels "
                             f"({width * height / 1e6:.1f} megapixels), above the limit of "
                             f"{self.max_pixels / 1e6:g} megapixels; send it downscaled")
        if min(width, height) < self.min_side:
            raise InputError(f"row {row}: {what} is {width} x {height} pixels; its shorter "
                             f"side is below the minimum of {self.min_side} px")


def check_declared(source: bytes | str, row: int, limits: InputLimits) -> None:
    """Refuse an encoded image (bytes or a file) whose header declares a size outside `limits`,
    decoding no pixel. Formats Pillow does not know pass (OpenCV then decodes them, within its
    own 1-gigapixel cap, and the decoded size is checked). Pillow itself refuses a header of more
    than twice its bomb limit (179 megapixels); that is refused here with the count it read."""
    import io
    import re
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise InputError(f"row {row}: the image declares {count} in its header, above the "
                         f"limit of {limits.max_pixels / 1e6:g} megapixels; send it "
                         "downscaled") from None
    except (UnidentifiedImageError, OSError, ValueError):
        size = _dicom_size(source)
        if size is not None:
            limits.check(*size, row, what="the image" if isinstance(source, bytes) else source)
        return
    limits.check(width, height, row, what="the image" if isinstance(source, bytes) else source)


def _dicom_size(source: bytes | str) -> tuple[int, int] | None:
    """A DICOM file's (width, height) from its header (Pillow reads no DICOM); None if it is
    not one."""
    if isinstance(source, str):
        return dicom.header_size(source) if dicom.is_dicom_file(source) else None
    return dicom.header_size(source) if dicom.is_dicom(source) else None


def decode_inputs(model_input: Any, limits: InputLimits = InputLimits(),
                  reading: Preprocessing = READING) -> list[np.ndarray]:
    """Any accepted input -> decoded uint8 images, gray (H, W) or BGR (H, W, 3), the way the
    training cache decodes files (DICOM through `reading`'s window and frame: the model's
    recorded preprocessing). Raises InputError naming the first bad row: unreadable, or
    outside `limits` (an encoded file's size read from its header, before decoding)."""
    if isinstance(model_input, Mapping) and not isinstance(model_input, pd.DataFrame):
        if set(model_input) - {IMAGE, PATH}:
            raise InputError(f"unknown input(s) {sorted(set(model_input) - {IMAGE, PATH})}; "
                             f"send `{IMAGE}` (encoded images or a uint8 tensor) or `{PATH}`")
        model_input = (model_input[IMAGE] if IMAGE in model_input
                       else pd.DataFrame({PATH: model_input[PATH]}))
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return _tensor_images(model_input, limits)
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        frame = pd.DataFrame({PATH: list(model_input)})
    else:
        raise InputError(f"cannot read a {type(model_input).__name__}: send a column "
                         f"`{IMAGE}` of base64 images, a uint8 tensor, or a column `{PATH}`")
    if len(frame) == 0:
        raise InputError("empty batch: no images to predict")
    if IMAGE not in frame.columns and PATH not in frame.columns:
        raise InputError(f"no `{IMAGE}` or `{PATH}` column (got {list(frame.columns)})")
    images = []
    for row in range(len(frame)):
        value = frame[IMAGE].iloc[row] if IMAGE in frame.columns else None
        if _missing(value):
            path = frame[PATH].iloc[row] if PATH in frame.columns else None
            if _missing(path):
                raise InputError(f"row {row}: neither `{IMAGE}` nor `{PATH}` is given")
            img = read_checked(str(path), row, limits, reading)
        else:
            img = _image_of(value, row, limits, reading)
        images.append(img)
    return images


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def read_checked(path: str, row: int, limits: InputLimits,
                 reading: Preprocessing = READING) -> np.ndarray:
    """A local file, its declared size checked before it is decoded."""
    check_declared(path, row, limits)
    img, reason = decode_file(path, reading)
    if img is None:
        raise InputError(f"row {row}: {path} cannot be read: {reason}")
    limits.check(img.shape[1], img.shape[0], row, what=path)
    return img


def _image_of(value: Any, row: int, limits: InputLimits, reading: Preprocessing) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"row {row}: `{IMAGE}` text is not base64") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        img, reason = _decoded(value, row, limits, reading)
        if img is None and reason == NOT_AN_IMAGE:
            # MLflow's `inputs` JSON form hands over the base64 text as bytes
            try:
                encoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                encoded = b""
            if encoded:
                img, reason = _decoded(encoded, row, limits, reading)
        if img is None and reason == NOT_AN_IMAGE:
            head = bytes(value[:8]).hex(" ") if len(value) else "nothing"
            raise InputError(f"row {row}: {len(value)} bytes that are not an image "
                             f"(JPEG, PNG, DICOM, ...; they start {head})")
        if img is None:
            raise InputError(f"row {row}: {reason}")
        return img
    return _pixels(np.asarray(value), row, limits)


def _decoded(data: bytes, row: int, limits: InputLimits, reading: Preprocessing
             ) -> tuple[np.ndarray | None, str]:
    """Encoded bytes -> (pixels, "") or (None, why not), the header's size checked first."""
    check_declared(data, row, limits)
    img, reason = decode_checked(data, reading)
    if img is not None:
        limits.check(img.shape[1], img.shape[0], row)
    return img, reason


def _tensor_images(tensor: np.ndarray, limits: InputLimits) -> list[np.ndarray]:
    if tensor.ndim not in (3, 4):
        raise InputError(f"a tensor must be (N, H, W, 3) or (N, H, W); got shape "
                         f"{tensor.shape}")
    if len(tensor) == 0:
        raise InputError("empty batch: no images to predict")
    return [_pixels(img, row, limits) for row, img in enumerate(tensor)]


def _pixels(img: np.ndarray, row: int, limits: InputLimits) -> np.ndarray:
    """One uint8 RGB (H, W, 3) or gray (H, W) image -> the decoder's gray or BGR."""
    if img.dtype != np.uint8:
        # JSON carries integers: accept whole numbers in 0..255, refuse anything else.
        whole = img.dtype.kind in "iu" and img.size and img.min() >= 0 and img.max() <= 255
        if not whole:
            raise InputError(f"row {row}: pixels must be uint8 (whole numbers 0-255); got "
                             f"dtype {img.dtype}" + (f" with values {img.min()}..{img.max()}"
                                                     if img.size and img.dtype.kind in "iuf"
                                                     else ""))
        img = img.astype(np.uint8)
    if img.ndim == 2 and min(img.shape) > 0:
        limits.check(img.shape[1], img.shape[0], row)
        return img
    if img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 0:
        limits.check(img.shape[1], img.shape[0], row)
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    raise InputError(f"row {row}: image shape {img.shape} is not (H, W, 3) RGB or (H, W) gray")
