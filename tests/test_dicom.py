"""DICOM reading: pydicom's own test files (written by scanners and other tools, not by us) and
files written here for each quirk, with their pixels known so every conversion is asserted."""
from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from orchestrator.data import dicom
from orchestrator.data.cache import (NOT_AN_IMAGE, decode_checked, decode_file, load_or_build,
                                     preprocess_image)
from orchestrator.data.dicom_write import Header, write_dicom, write_report
from orchestrator.data.readers.walk import file_skip_reason
from orchestrator.errors import ConfigError
from orchestrator.serving.inputs import InputError, InputLimits, decode_inputs
from tasks.base import Preprocessing

# Only files pydicom ships in its wheel (others are downloaded on first use: not here).
SHIPPED = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
           "JPEG2000.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm",
           "SC_jpeg_no_color_transform.dcm", "693_J2KI.dcm"]
RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 12-bit values, all distinct


def _linear(values, center, width):
    """The standard's LINEAR window, written out independently of the reader."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5)
    out = np.where(values <= low, 0.0, np.where(values > high, 1.0, out))
    return np.rint(out * 255).astype(np.uint8)


@pytest.mark.parametrize("name", SHIPPED)
def test_pydicom_test_files_decode(name):
    img, reason = decode_file(get_testdata_file(name))
    assert reason == "" and img is not None and img.dtype == np.uint8
    assert img.ndim in (2, 3) and img.max() > img.min()  # a picture, not a flat field


def test_compressed_and_big_endian_copies_decode_to_the_same_pixels():
    plain = decode_file(get_testdata_file("MR_small.dcm"))[0]
    for other in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm"):
        np.testing.assert_array_equal(decode_file(get_testdata_file(other))[0], plain)


def test_mr_small_uses_its_own_window():
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    expected = _linear(ds.pixel_array.astype(float), float(ds.WindowCenter),
                       float(ds.WindowWidth))
    np.testing.assert_array_equal(decode_file(get_testdata_file("MR_small.dcm"))[0], expected)


def test_rescale_then_file_window(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", RAMP, slope=2.0, intercept=-1024,
                       window=(40.0, 400.0), bits_stored=12)
    expected = _linear(RAMP * 2.0 - 1024, 40.0, 400.0)
    np.testing.assert_array_equal(decode_file(path)[0], expected)
    # a reader that skips the rescale sees other pixels
    assert not np.array_equal(_linear(RAMP.astype(float), 40.0, 400.0), expected)


def test_given_window_replaces_the_files(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", RAMP, slope=1.0, intercept=-1024, window=(40, 400))
    img = decode_file(path, Preprocessing(dicom_window=dicom.parse_window("-600, 1500")))[0]
    np.testing.assert_array_equal(img, _linear(RAMP - 1024.0, -600.0, 1500.0))


def test_auto_window_spans_the_values(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", RAMP, window=(100, 50))
    img = decode_file(path, Preprocessing(dicom_window="auto"))[0]
    assert img.min() == 0 and img.max() == 255
    assert np.all(np.diff(img.ravel().astype(int)) >= 0)  # monotone in the stored values
    # `file` on a file without a window falls back to the same
    bare = write_dicom(tmp_path / "b.dcm", RAMP)
    np.testing.assert_array_equal(decode_file(bare)[0], img)


def test_sixteen_bit_values_are_windowed_then_scaled_to_eight_bits(tmp_path):
    wide = (RAMP.astype(np.uint32) * 16).astype(np.uint16)  # 0..65280
    path = write_dicom(tmp_path / "w.dcm", wide, window=(32768, 65536))
    img = decode_file(path)[0]
    np.testing.assert_array_equal(img, _linear(wide.astype(float), 32768, 65536))
    assert img.dtype == np.uint8 and 0 < img[8, 8] < 255  # not clipped, not the low byte


def test_monochrome1_is_inverted(tmp_path):
    two = write_dicom(tmp_path / "m2.dcm", RAMP, window=(2048, 4096))
    one = write_dicom(tmp_path / "m1.dcm", RAMP, window=(2048, 4096), photometric="MONOCHROME1")
    np.testing.assert_array_equal(decode_file(one)[0], 255 - decode_file(two)[0])


def test_signed_values(tmp_path):
    signed = (RAMP.astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", signed, signed=True, window=(0, 1000))
    np.testing.assert_array_equal(decode_file(path)[0], _linear(signed.astype(float), 0, 1000))


def test_rgb_and_ybr_become_bgr(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30
    img = decode_file(write_dicom(tmp_path / "rgb.dcm", rgb))[0]
    np.testing.assert_array_equal(img[0, 0], [30, 100, 200])  # BGR, as OpenCV decodes
    # the same colour stored as YBR_FULL (PS3.3 C.7.6.3.1.2)
    r, g, b = 200.0, 100.0, 30.0
    y = 0.299 * r + 0.587 * g + 0.114 * b
    ybr = np.stack([np.full((8, 8), v) for v in
                    (y, -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                     0.5 * r - 0.418688 * g - 0.081312 * b + 128)], axis=-1)
    img = decode_file(write_dicom(tmp_path / "ybr.dcm", np.rint(ybr).astype(np.uint8),
                                  photometric="YBR_FULL"))[0]
    assert np.abs(img[0, 0].astype(int) - [30, 100, 200]).max() <= 2


def test_multi_frame_is_refused_unless_a_frame_is_chosen(tmp_path):
    frames = np.stack([np.full((8, 8), 10 * (k + 1), np.uint8) for k in range(3)])
    path = write_dicom(tmp_path / "cine.dcm", frames, window=(128, 256))
    img, reason = decode_file(path)
    assert img is None and "multi-frame" in reason and "3 frames" in reason
    img = decode_file(path, Preprocessing(dicom_frame=2))[0]
    np.testing.assert_array_equal(img, _linear(np.full((8, 8), 30.0), 128, 256))
    assert "holds 3 frame" in decode_file(path, Preprocessing(dicom_frame=3))[1]


def test_objects_without_pixels_and_damaged_pixels_say_why(tmp_path):
    report = write_report(tmp_path / "report", Header(patient_id="P1"))
    img, reason = decode_file(report)
    assert img is None and "without pixel data" in reason and "structured report" in reason
    assert "radiotherapy plan" in decode_file(get_testdata_file("rtplan.dcm"))[1]
    whole = write_dicom(tmp_path / "ok.dcm", RAMP, compress_rle=True).read_bytes()
    img, reason = decode_checked(whole[:-200])
    assert img is None and reason.startswith("damaged DICOM file: its data set or pixel data ends")
    garbled = bytearray(whole)
    garbled[-300:-100] = b"\xff" * 200  # RLE segments that decode to the wrong length
    img, reason = decode_checked(bytes(garbled))
    assert img is None and reason.startswith("DICOM pixel data cannot be decoded (RLE")
    assert decode_checked(b"plain text, no image")[1] == NOT_AN_IMAGE


def test_rle_compressed_file_equals_its_uncompressed_twin(tmp_path):
    plain = write_dicom(tmp_path / "p.dcm", RAMP, window=(2000, 3000))
    rle = write_dicom(tmp_path / "r.dcm", RAMP, window=(2000, 3000), compress_rle=True)
    np.testing.assert_array_equal(decode_file(rle)[0], decode_file(plain)[0])


def test_a_file_is_dicom_by_its_magic_whatever_its_name(tmp_path):
    path = write_dicom(tmp_path / "IM000123", RAMP)
    assert file_skip_reason(path) is None
    (tmp_path / "notes").write_text("not an image")
    assert file_skip_reason(tmp_path / "notes") == "not an image (no extension)"
    assert decode_file(path)[0] is not None


def test_window_option_is_checked():
    assert dicom.parse_window(" 40, 400 ") == "40,400"
    assert dicom.parse_window("AUTO") == "auto"
    for bad in ("wide", "40", "40,0", "40,-3", "a,b"):
        with pytest.raises(ConfigError, match="--dicom-window"):
            dicom.parse_window(bad)
    with pytest.raises(ConfigError, match="--dicom-frame"):
        dicom.check_frame(-2)


QUIRKS = {
    "rescale_window": dict(stored=RAMP, slope=2.0, intercept=-1024, window=(40.0, 400.0)),
    "monochrome1": dict(stored=RAMP, window=(2048, 4096), photometric="MONOCHROME1"),
    "no_window": dict(stored=RAMP),
    "rle": dict(stored=RAMP, window=(1000, 2000), compress_rle=True),
    "big_endian": dict(stored=RAMP, window=(1000, 2000), big_endian=True),
    "rgb": dict(stored=np.dstack([RAMP // 16, RAMP // 32, 255 - RAMP // 16]).astype(np.uint8)),
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
@pytest.mark.parametrize("reading", [Preprocessing(grayscale=True),
                                     Preprocessing(clahe=True, dicom_window="auto")])
def test_serving_reads_dicom_bytes_as_training_cached_them(tmp_path, quirk, reading):
    """The cache (training) and the served model's door (base64 bytes, and a path) give the
    same model input, pixel for pixel, for each quirk."""
    path = write_dicom(tmp_path / f"{quirk}.dcm", **QUIRKS[quirk])
    cached = load_or_build([str(path)], reading, 32, content_fp=f"test-{quirk}",
                           root=tmp_path / "cache", log=lambda _: None)
    assert cached.ok.all()
    posted = base64.b64encode(path.read_bytes()).decode()
    for served in (decode_inputs(pd.DataFrame({"image": [posted]}), InputLimits(), reading)[0],
                   decode_inputs(pd.DataFrame({"path": [str(path)]}), InputLimits(), reading)[0]):
        np.testing.assert_array_equal(preprocess_image(served, reading, 32), cached.images[0])


def test_the_served_door_names_a_dicom_files_problem_and_checks_its_size(tmp_path):
    frames = np.zeros((2, 16, 16), np.uint8)
    posted = base64.b64encode(write_dicom(tmp_path / "c.dcm", frames).read_bytes()).decode()
    with pytest.raises(InputError, match="row 0: multi-frame DICOM"):
        decode_inputs(pd.DataFrame({"image": [posted]}))
    big = base64.b64encode(write_dicom(tmp_path / "b.dcm", np.zeros((64, 64), np.uint8))
                           .read_bytes()).decode()
    with pytest.raises(InputError, match="above the limit"):
        decode_inputs(pd.DataFrame({"image": [big]}), InputLimits(max_pixels=1000))


def test_a_dicom_folder_prepares_with_non_images_listed_and_the_window_recorded(tmp_path):
    """A labels.csv over DICOM files (some without an extension), a structured report and a
    multi-frame file mixed in: the two are listed with their reasons before splitting, and the
    manifest records how DICOM was read; `load_recorded` reads it back the same way."""
    from orchestrator.data.dataset import load_recorded, prepare_dataset
    from tasks import get_task

    root = tmp_path / "export"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        label = "tumour" if i % 2 else "normal"
        stored = rng.integers(0, 4096, (24, 24)).astype(np.uint16)
        stored[4:12, 4:12] = 4000 if label == "tumour" else 200
        name = f"IM{i:04d}" if i % 3 == 0 else f"im{i:04d}.dcm"
        write_dicom(root / name, stored, slope=1.0, intercept=-1024, window=(1000, 3000))
        rows.append((name, label))
    write_report(root / "report.dcm")
    write_dicom(root / "cine.dcm", np.zeros((2, 24, 24), np.uint8))
    rows += [("report.dcm", "normal"), ("cine.dcm", "tumour")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    said = []
    task = get_task("folder").with_dicom("auto", -1)
    prepared = prepare_dataset(task, root, 32, manifest_dir=tmp_path / "m", log=said.append)
    assert len(prepared.table) == 48
    lost = dict(zip(prepared.integrity.lost["path"], prepared.integrity.lost["detail"]))
    assert "structured report" in lost["report.dcm"] and "multi-frame" in lost["cine.dcm"]
    assert any("cine.dcm (multi-frame DICOM (2 frames)" in line for line in said)
    import json
    meta = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert meta["dicom_window"] == "auto" and meta["dicom_frame"] == -1
    again = load_recorded(get_task("folder"), tmp_path / "m", 32, log=lambda _: None)
    assert again.task.preprocessing.dicom_window == "auto"
    np.testing.assert_array_equal(again.images[again.table["row"].to_numpy()],
                                  prepared.images[prepared.table["row"].to_numpy()])


def test_a_voi_lut_sequence_is_the_files_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = (np.arange(256, dtype=np.uint16) * 4).reshape(16, 16)  # 0..1020
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 12]  # 256 entries for values 0..255, 12-bit output
    table = (np.linspace(0, 4095, 256) ** 2 / 4095).astype(np.uint16)  # a gamma curve
    lut.add_new("LUTData", "US", table.tolist())
    path = write_dicom(tmp_path / "lut.dcm", stored, window=(900, 10),
                       header=Header(extra={"VOILUTSequence": Sequence([lut])}))
    expected = np.rint(table[np.clip(stored, 0, 255)] / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_file(path)[0], expected)  # the LUT, not the window
    windowed = decode_file(path, Preprocessing(dicom_window="900,10"))[0]
    np.testing.assert_array_equal(windowed, _linear(stored.astype(float), 900, 10))


def test_pixel_data_no_installed_decoder_reads_is_named_with_each_decoders_reason():
    """pydicom's JPEG-lossy.dcm: 12-bit JPEG Extended that libjpeg rejects (a misplaced marker)
    and Pillow (and GDCM's wheel) do not support: listed with the reason, never guessed at."""
    img, reason = decode_file(get_testdata_file("JPEG-lossy.dcm"))
    assert img is None
    assert reason.startswith("DICOM pixel data cannot be decoded (JPEG Extended")
    assert "pylibjpeg:" in reason and "pillow:" in reason
