"""The served model's contract and card (orchestrator/serving/): every accepted input form
decodes to the same pixels, bad input names its row, the answer applies the versioned spec."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pandas as pd
import pytest

from orchestrator.clinical.calibration import apply_temperature
from orchestrator.serving import contract
from orchestrator.serving.card import CardFacts, Interval, card_tags, model_card


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def test_every_input_form_gives_the_decoders_pixels(rgb, tmp_path):
    bgr = [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in rgb]
    files = []
    for i, img in enumerate(bgr):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), img)
    pngs = [_png(img) for img in bgr]
    forms = {
        "bytes column": pd.DataFrame({"image": pngs}),
        "base64 column": pd.DataFrame({"image": [base64.b64encode(b).decode() for b in pngs]}),
        "base64 as bytes": pd.DataFrame({"image": [base64.b64encode(b) for b in pngs]}),
        "path column": pd.DataFrame({"path": [str(f) for f in files]}),
        "uint8 tensor": rgb,
        "tensor in a dict": {"image": rgb},
        "tensor rows as JSON lists": pd.DataFrame({"image": [img.tolist() for img in rgb]}),
    }
    for name, value in forms.items():
        images = contract.decode_inputs(value)
        assert len(images) == 2, name
        for got, want in zip(images, bgr):
            np.testing.assert_array_equal(got, want, err_msg=name)
    gray = rgb[..., 0]
    assert contract.decode_inputs(gray)[1].shape == (20, 24)


@pytest.mark.parametrize("value, message", [
    (pd.DataFrame({"image": [b"\x89PNG broken", b"not an image at all"]}),
     "row 0: 11 bytes that are not an image"),
    (pd.DataFrame({"image": ["@@not base64@@"]}), "row 0: `image` text is not base64"),
    (np.zeros((2, 8, 8, 3), dtype=np.float32) + 0.5, "row 0: pixels must be uint8"),
    (pd.DataFrame({"image": [np.zeros((8, 8, 3), dtype=int).tolist(),
                             np.full((8, 8, 3), 300).tolist()]}),
     "row 1: pixels must be uint8 (whole numbers 0-255); got dtype int64 with values 300..300"),
    (np.zeros((2, 8, 8, 4), dtype=np.uint8), "row 0: image shape (8, 8, 4)"),
    (np.zeros((8,), dtype=np.uint8), "must be (N, H, W, 3) or (N, H, W)"),
    (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty batch"),
    (pd.DataFrame({"image": pd.Series([], dtype=object)}), "empty batch"),
    (pd.DataFrame({"path": ["/nowhere/x.jpg"]}), "row 0: /nowhere/x.jpg is missing"),
    (pd.DataFrame({"pixels": [1]}), "no `image` or `path` column"),
    ({"images": [1]}, "unknown input"),
])
def test_bad_input_names_the_row(value, message):
    with pytest.raises(contract.InputError) as err:
        contract.decode_inputs(value)
    assert message in str(err.value)


def _spec(**kw) -> contract.ServingSpec:
    base = dict(classes=("normal", "pneumonia"), temperature=2.0, refer_cut=0.7,
                target_accuracy=0.95, held_out_coverage=0.8, positive_class="pneumonia",
                threshold=0.3)
    return contract.ServingSpec(**{**base, **kw})


def test_the_answer_applies_temperature_threshold_and_cut():
    raw = np.array([[0.9, 0.1], [0.6, 0.4], [0.05, 0.95]])
    spec = _spec()
    out = contract.answer(raw, spec)
    calibrated = apply_temperature(raw, 2.0)
    np.testing.assert_allclose(out[["prob_normal", "prob_pneumonia"]], calibrated)
    positive = calibrated[:, 1] >= 0.3
    assert out["decision"].tolist() == ["pneumonia" if p else "normal" for p in positive]
    decided = np.where(positive, calibrated[:, 1], calibrated[:, 0])
    np.testing.assert_allclose(out["confidence"], decided)
    assert out["refer"].tolist() == (decided < 0.7).tolist()
    assert list(out.columns) == ["prob_normal", "prob_pneumonia", "decision", "confidence",
                                 "refer"]
    multi = contract.answer(np.array([[0.2, 0.5, 0.3]]),
                            _spec(classes=("a", "b", "c"), positive_class=None, threshold=None))
    assert multi["decision"].tolist() == ["b"]


def test_the_spec_round_trips_and_refuses_a_threshold_without_a_positive_class():
    spec = _spec()
    assert contract.ServingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="positive class"):
        _spec(classes=("a", "b", "c"), positive_class=None)
    with pytest.raises(ValueError, match="temperature"):
        _spec(temperature=0.0)


def _facts(**kw) -> CardFacts:
    base = dict(task="pneumonia/2class", metric="balanced_accuracy", data_fingerprint="f" * 32,
                test_fingerprint="e" * 32, synthetic=True, split_counts={"train": 80, "test": 20},
                members=[("t1", 0.75, 64, 3), ("t2", 0.25, 96, 3)], tta_policy="standard6",
                tta_transforms=6, held_out={"balanced_accuracy": 0.9},
                test={"balanced_accuracy": Interval(0.88, 0.8, 0.95),
                      "roc_auc": Interval(0.93, float("nan"), float("nan"))},
                spec=_spec(), sweep_run_id="s" * 32, ensemble_run_id="r" * 32)
    return CardFacts(**{**base, **kw})


def test_the_card_states_data_members_figures_operating_point_and_limits():
    card = model_card(_facts())
    assert card.splitlines()[0] == ("MedSweep ensemble for pneumonia/2class: test "
                                    "balanced_accuracy 0.880 [0.800, 0.950]; SYNTHETIC phantom "
                                    "data.")
    for text in ("## ⚠ SYNTHETIC PHANTOM DATA", "`normal`, `pneumonia`", "f" * 32, "e" * 32,
                 "| t1 | 0.750 | 64 px | 3 |", "standard6", "0.880 [0.800, 0.950]", "| roc_auc |",
                 "T = 2.0000", "at least 0.3000", "below 0.7000", "80.0% of cases accepted",
                 "Intended use and limits", "s" * 32):
        assert text in card, text
    assert "SYNTHETIC" not in model_card(_facts(synthetic=False))
    everything = model_card(_facts(spec=_spec(refer_cut=2.0, held_out_coverage=0.0)))
    assert "`refer` is always true" in everything
    tags = card_tags(_facts())
    assert tags["test_balanced_accuracy"] == "0.880 [0.800, 0.950]"
    assert tags["test_fingerprint"] == "e" * 32 and tags["positive_class"] == "pneumonia"
