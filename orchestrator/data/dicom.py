"""DICOM files -> the 8-bit pixels every other image decodes to, the way a radiologist sees them.

A hospital export stores 12-16-bit values with a rescale (the modality LUT: CT's Hounsfield
units), a display window chosen by the modality or a reader (the VOI LUT), MONOCHROME1 images
stored inverted, colour as RGB, YBR or a palette, and compressed pixel data. Converting such a
file to JPEG by hand loses the window and silently inverts a share of the images; here the
standard's chain is applied in order (PS3.3 C.11): modality LUT -> window -> MONOCHROME1
inverted -> 8 bits. `read_dicom` is the one reader: the training cache, `predict` and the served
model all call it through `orchestrator.data.cache.decode_bytes`, with the window and frame the
model's spec records, so serving reads a file's bytes exactly as training did.

A file is DICOM by its `DICM` magic after the 128-byte preamble, whatever its name.
"""
from __future__ import annotations

import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from orchestrator.errors import ConfigError

MAGIC_OFFSET = 128
MAGIC = b"DICM"
WINDOW_MODES = ("file", "auto")  # or "CENTER,WIDTH"
DEFAULT_WINDOW = "file"
NO_FRAME = -1  # a single-frame file, or a multi-frame file refused
AUTO_PERCENTILES = (0.5, 99.5)  # `auto`: the window spans these percentiles of the values
# Objects that hold no image; named in the line that says why a file was left out.
NON_IMAGE_MODALITIES = {"SR": "structured report", "PR": "presentation state",
                        "KO": "key object selection", "RTPLAN": "radiotherapy plan",
                        "RTSTRUCT": "radiotherapy structure set", "DOC": "document"}


class UnreadableImage(ValueError):
    """A file that holds no usable image; the message is the reason, for a person."""


def is_dicom(data: bytes) -> bool:
    """The DICOM magic after the preamble (PS3.10 7.1)."""
    return data[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def is_dicom_file(path: str | Path) -> bool:
    """Whether a file on disk starts like a DICOM file (its first 132 bytes read)."""
    try:
        with open(path, "rb") as handle:
            return is_dicom(handle.read(MAGIC_OFFSET + len(MAGIC)))
    except OSError:
        return False


def parse_window(text: str) -> str:
    """`--dicom-window` -> its canonical text: `file`, `auto` or `CENTER,WIDTH` (width > 0)."""
    value = str(text).strip().lower()
    if value in WINDOW_MODES:
        return value
    parts = value.split(",")
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--dicom-window {text!r}: expected file, auto or CENTER,WIDTH "
                          "(e.g. 40,400 for a CT soft-tissue window)") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ConfigError(f"--dicom-window {text!r}: the width must be a positive number")
    return f"{center:g},{width:g}"


def check_frame(frame: int) -> int:
    """`--dicom-frame`: a frame index (0 = first) or NO_FRAME."""
    if not isinstance(frame, int) or frame < NO_FRAME:
        raise ConfigError(f"--dicom-frame {frame!r}: expected a frame index, 0 for the first")
    return frame


def add_dicom_arguments(parser) -> None:
    """`--dicom-window` and `--dicom-frame`, shared by the CLIs that read a data folder."""
    parser.add_argument("--dicom-window", default=DEFAULT_WINDOW, metavar="file|auto|C,W",
                        help="how DICOM values become pixels: each file's own first window "
                        "(file, the default; files without one use auto), the values' own "
                        "0.5-99.5 percentile range (auto), or one CENTER,WIDTH for every file "
                        "(e.g. 40,400). Recorded with the data and the model, so predict and "
                        "the served model read DICOM the same way")
    parser.add_argument("--dicom-frame", type=int, default=NO_FRAME, metavar="K",
                        help="the frame (0 = first) to read from multi-frame DICOM files (by "
                        "default they are left out, each named with the reason)")


def read_dicom(data: bytes, window: str = DEFAULT_WINDOW, frame: int = NO_FRAME) -> np.ndarray:
    """DICOM bytes -> uint8 gray (H, W) or BGR (H, W, 3); UnreadableImage says why not."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its warnings become our reasons
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as err:
        raise UnreadableImage(f"damaged DICOM file ({err})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds or len(ds) == 0:  # an image cut off (pydicom then keeps nothing)
            raise UnreadableImage("damaged DICOM file: its data set or pixel data ends early "
                                  "(a cut-short copy?)")
        raise UnreadableImage(f"DICOM object without pixel data ({_what(ds)})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame == NO_FRAME:
        raise UnreadableImage(f"multi-frame DICOM ({frames} frames); choose one with "
                              "--dicom-frame")
    if frame >= frames:
        raise UnreadableImage(f"--dicom-frame {frame}, but the file holds {frames} frame(s)")
    pixels = _pixels(ds, frame if frames > 1 else None)
    if int(ds.get("SamplesPerPixel", 1)) == 3 or ds.get("PhotometricInterpretation") == \
            "PALETTE COLOR":
        return _colour(pixels, ds)
    return _gray(pixels, ds, parse_window(window))


def _what(ds) -> str:
    modality = str(ds.get("Modality", "")).upper()
    sop = ds.get("SOPClassUID")
    name = NON_IMAGE_MODALITIES.get(modality) or (sop.name if sop is not None else "")
    return name or f"modality {modality or 'unknown'}"


def _pixels(ds, index: int | None) -> np.ndarray:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index, as_rgb=True)
            return np.asarray(ds.pixel_array)
    except Exception as err:  # noqa: BLE001 - each decoder plug-in raises its own kinds
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        said = "; ".join(lines[1:] if len(lines) > 1 else lines)  # each plug-in's own reason
        raise UnreadableImage(f"DICOM pixel data cannot be decoded ({name}): "
                              f"{said[:240]}") from None


def _gray(pixels: np.ndarray, ds, window: str) -> np.ndarray:
    """Modality LUT -> window -> MONOCHROME1 inverted -> 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window == "file" and "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        top = float(2 ** int(lut.LUTDescriptor[2]) - 1)
        with warnings.catch_warnings():  # the LUT is indexed by whole values
            warnings.simplefilter("ignore")
            unit = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, 0),
                              dtype=np.float64) / top
    else:
        center, width, function = _window_of(values, ds, window)
        unit = apply_window(values, center, width, function)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _window_of(values: np.ndarray, ds, window: str) -> tuple[float, float, str]:
    """(center, width, VOI LUT function): the file's first window, the given one, or `auto`."""
    if window == "file":
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            return center, width, str(ds.get("VOILUTFunction", "LINEAR")).upper()
        window = "auto"  # the file carries no window: its own value range
    if window == "auto":
        low, high = np.percentile(values, AUTO_PERCENTILES)
        return (low + high) / 2.0, max(float(high - low), 1e-6), "LINEAR_EXACT"
    center, width = (float(p) for p in window.split(","))
    return center, width, "LINEAR"


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str)
                     else value)
    except (TypeError, ValueError, IndexError):
        return None


def apply_window(values: np.ndarray, center: float, width: float,
                 function: str = "LINEAR") -> np.ndarray:
    """Values -> 0..1 through a VOI window (PS3.3 C.11.2.1.2): LINEAR (the standard's
    `c - 0.5`, `w - 1` form), LINEAR_EXACT, or SIGMOID."""
    values = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" or width <= 1:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _colour(pixels: np.ndarray, ds) -> np.ndarray:
    """RGB (YBR already converted by pydicom; a palette applied) -> 8-bit BGR."""
    import cv2
    from pydicom.pixels import apply_color_lut

    palette = str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
    if palette:
        pixels = apply_color_lut(pixels, ds)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:  # palette entries are 16-bit; else the stored bit depth
        top = 65535.0 if palette else float(2 ** int(ds.get("BitsStored", 16)) - 1)
        pixels = np.rint(np.clip(pixels / top, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)


def header_size(source: bytes | str | Path) -> tuple[int, int] | None:
    """(width, height) from a DICOM header (bytes, or a file read only up to its pixels)
    without decoding pixels; None if not readable."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source,
                             stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:  # noqa: BLE001 - the decoder then says what is wrong
        return None
