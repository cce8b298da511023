"""The served model's contract and card (orchestrator/serving/): every accepted input form
decodes to the same pixels, bad input names its row, the answer applies the versioned spec."""
from __future__ import annotations

import base64
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from orchestrator.clinical.calibration import apply_temperature
from orchestrator.serving import contract, inputs
from orchestrator.serving.card import CardFacts, Interval, card_tags, model_card
from orchestrator.data.cache import decode_bytes


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
        images = inputs.decode_inputs(value)
        assert len(images) == 2, name
        for got, want in zip(images, bgr):
            np.testing.assert_array_equal(got, want, err_msg=name)
    gray = rgb[..., 0]
    assert inputs.decode_inputs(gray)[1].shape == (20, 24)


@pytest.mark.parametrize("value, message", [
    (pd.DataFrame({"image": [b"\x89PNG broken", b"not an image at all"]}),
     "row 0: 11 bytes that are not an image"),
    (pd.DataFrame({"image": ["@@not base64@@"]}), "row 0: `image` text is not base64"),
    (np.zeros((2, 8, 8, 3), dtype=np.float32) + 0.5, "row 0: pixels must be uint8"),
    (pd.DataFrame({"image": [np.zeros((16, 16, 3), dtype=int).tolist(),
                             np.full((16, 16, 3), 300).tolist()]}),
     "row 1: pixels must be uint8 (whole numbers 0-255); got dtype int64 with values 300..300"),
    (np.zeros((2, 8, 8, 4), dtype=np.uint8), "row 0: image shape (8, 8, 4)"),
    (np.zeros((8,), dtype=np.uint8), "must be (N, H, W, 3) or (N, H, W)"),
    (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty batch"),
    (pd.DataFrame({"image": pd.Series([], dtype=object)}), "empty batch"),
    (pd.DataFrame({"path": ["/nowhere/x.jpg"]}),
     "row 0: /nowhere/x.jpg cannot be read: no such file"),
    (pd.DataFrame({"pixels": [1]}), "no `image` or `path` column"),
    ({"images": [1]}, "unknown input"),
])
def test_bad_input_names_the_row(value, message):
    with pytest.raises(inputs.InputError) as err:
        inputs.decode_inputs(value)
    assert message in str(err.value)


def _declaring_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is cut off: decoding it
    would fail, so a refusal that names the size was made from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                             0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(100))))


def test_the_door_refuses_from_the_header_before_decoding(tmp_path):
    over = _declaring_png(8000, 7000)  # 56 MP: over the default 50
    assert decode_bytes(over) is None  # not decodable: only its header can be read
    for form in (pd.DataFrame({"image": [_png(np.zeros((20, 20, 3), np.uint8)), over]}),
                 pd.DataFrame({"image": [base64.b64encode(over).decode()]}),
                 pd.DataFrame({"image": [base64.b64encode(over)]})):
        with pytest.raises(inputs.InputError, match=r"row \d: the image is 8000 x 7000 pixels "
                           r"\(56.0 megapixels\), above the limit of 50 megapixels"):
            inputs.decode_inputs(form)
    (tmp_path / "big.png").write_bytes(over)
    with pytest.raises(inputs.InputError, match="big.png is 8000 x 7000 pixels"):
        inputs.decode_inputs(pd.DataFrame({"path": [str(tmp_path / "big.png")]}))
    # beyond Pillow's own bomb limit the count it read is given
    with pytest.raises(inputs.InputError, match="declares 400.0 megapixels in its header"):
        inputs.decode_inputs(pd.DataFrame({"image": [_declaring_png(20000, 20000)]}))
    # a limit of the spec's own, and the shortest side, for every form
    small = inputs.InputLimits(max_pixels=300, min_side=16)
    with pytest.raises(inputs.InputError, match=r"20 x 20 pixels \(0.0 megapixels\)"):
        inputs.decode_inputs(np.zeros((1, 20, 20, 3), np.uint8), small)
    for form in (np.zeros((1, 15, 40), np.uint8),
                 pd.DataFrame({"image": [_png(np.zeros((40, 15, 3), np.uint8))]})):
        with pytest.raises(inputs.InputError, match="shorter side is below the minimum of 16"):
            inputs.decode_inputs(form)
    assert len(inputs.decode_inputs(np.zeros((1, 16, 16), np.uint8))) == 1


def test_the_spec_versions_the_input_limits():
    spec = _spec(max_pixels=1_000_000, min_side=32)
    assert spec.input_limits == inputs.InputLimits(1_000_000, 32)
    assert contract.ServingSpec.from_dict(spec.to_dict()) == spec
    assert _spec().input_limits == inputs.InputLimits()  # a spec without them: the defaults
    with pytest.raises(ValueError, match="input limits must be >= 1"):
        _spec(min_side=0)


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
                 "- `t1`: weight 0.750, 64 px, 3 model(s)", "standard6", "Images per split: test 20, train 80.",
                 "- balanced_accuracy: validation 0.900; test 0.880 [0.800, 0.950]",
                 "- roc_auc: test 0.930\n",
                 "T = 2.0000", "at least 0.3000", "below 0.7000", "80.0% of cases accepted",
                 "Intended use and limits", "s" * 32):
        assert text in card, text
    assert "SYNTHETIC" not in model_card(_facts(synthetic=False))
    # lists, not Markdown tables: the MLflow UI draws a description's tables without borders
    assert not any(line.startswith("|") for line in card.splitlines())
    nan = float("nan")
    everything = model_card(_facts(spec=_spec(refer_cut=2.0, held_out_coverage=0.0), test={
        "balanced_accuracy": Interval(0.88, 0.8, 0.95),
        "coverage_at_refer_cut": Interval(0.0, 0.0, 0.0),
        "accuracy_accepted_at_refer_cut": Interval(nan, nan, nan)}))
    assert "`refer` is always true" in everything
    # no case accepted is said in words, never as nan or an interval of zeros
    assert ("- coverage_at_refer_cut: test 0.000 (every case referred: no test case accepted)"
            in everything)
    assert "- accuracy_accepted_at_refer_cut: test none (no test case accepted)" in everything
    assert not re.search(r"\bnan\b", everything) and "[0.000, 0.000]" not in everything
    tags = card_tags(_facts())
    assert tags["test_balanced_accuracy"] == "0.880 [0.800, 0.950]"
    assert tags["test_fingerprint"] == "e" * 32 and tags["positive_class"] == "pneumonia"


def test_the_card_and_spec_carry_what_backs_the_refer_cut():
    backed = _spec(refer_level=0.95, refer_lower_bound=0.962, held_out_cases=240)
    data = backed.to_dict()
    assert (data["refer_level"], data["refer_lower_bound"], data["held_out_cases"]) == (
        0.95, 0.962, 240)
    assert contract.ServingSpec.from_dict(data) == backed
    assert backed.answered_heads[0].refer_lower_bound == 0.962
    assert not {"refer_level", "refer_lower_bound", "held_out_cases"} & set(_spec().to_dict())
    card = model_card(_facts(spec=backed))
    assert ("- Inputs: an image of more than 50 megapixels (read from its header, before "
            "decoding) or with a side under 16 px is refused") in card
    assert "more than 2 megapixels" in model_card(_facts(spec=_spec(max_pixels=2_000_000)))
    assert ("80.0% of 240 validation cases accepted, whose accuracy has a 95% lower bound of "
            "0.962 (at or above the target 0.95") in card
    unreachable = model_card(_facts(spec=_spec(refer_cut=2.0, held_out_coverage=0.0,
                                                refer_level=0.95, held_out_cases=60)))
    assert ("`refer` is always true: no confidence level supports accuracy 0.95 on these 60 "
            "validation cases at the 95% level") in unreachable
    assert "lower the target or add data" in unreachable


def test_the_card_of_a_one_group_test_split_gives_points_and_says_why():
    note = "test holds 1 group: no interval"
    nan = float("nan")
    facts = _facts(test={"balanced_accuracy": Interval(0.83, nan, nan, note),
                         "roc_auc": Interval(0.9, nan, nan, note)},
                   interval_notes=[f"{note} for any test figure"])
    card = model_card(facts)
    assert card.splitlines()[0] == ("MedSweep ensemble for pneumonia/2class: test "
                                    "balanced_accuracy 0.830 [no interval]; SYNTHETIC phantom "
                                    "data.")
    assert "- balanced_accuracy: validation 0.900; test 0.830 [no interval]" in card
    assert "- Test holds 1 group: no interval for any test figure." in card
    assert "[0.830, 0.830]" not in card and "nan" not in card
    assert card_tags(facts)["test_balanced_accuracy"] == "0.830 [no interval]"
    # a sound interval reads as before, and a card without notes has no such line
    assert Interval(0.88, 0.8, 0.95).text() == "0.880 [0.800, 0.950]"
    assert "no interval" not in model_card(_facts())


# --- a multi-head model ------------------------------------------------------------------------
def _heads_spec() -> contract.ServingSpec:
    heads = (contract.HeadSpec("shape", "classification", classes=("disc", "square", "ring"),
                               temperature=2.0, refer_cut=0.6, target_accuracy=0.95,
                               held_out_coverage=0.7),
             contract.HeadSpec("grade", "classification", classes=("low", "high"),
                               temperature=0.5, refer_cut=2.0, target_accuracy=0.95,
                               held_out_coverage=0.0),
             contract.HeadSpec("size", "regression", unit="mm"))
    return contract.ServingSpec(classes=("disc", "square", "ring"), temperature=2.0,
                                refer_cut=0.6, target_accuracy=0.95, held_out_coverage=0.7,
                                heads=heads)


def test_a_multihead_answer_has_a_block_of_columns_per_head():
    spec = _heads_spec()
    raw = np.array([[0.7, 0.2, 0.1, 0.45, 0.55, 31.5],
                    [0.1, 0.3, 0.6, 0.9, 0.1, 12.25]])
    out = contract.answer(raw, spec)
    assert list(out.columns) == [
        "shape_prob_disc", "shape_prob_square", "shape_prob_ring", "shape_decision",
        "shape_confidence", "shape_refer", "grade_prob_low", "grade_prob_high",
        "grade_decision", "grade_confidence", "grade_refer", "size_value"]
    assert [c for c, _ in contract.output_columns(spec)] == list(out.columns)
    shape = apply_temperature(raw[:, :3], 2.0)
    grade = apply_temperature(raw[:, 3:5], 0.5)  # its own temperature
    np.testing.assert_allclose(out[["shape_prob_disc", "shape_prob_square",
                                    "shape_prob_ring"]], shape)
    np.testing.assert_allclose(out[["grade_prob_low", "grade_prob_high"]], grade)
    np.testing.assert_allclose(out[["grade_prob_low", "grade_prob_high"]].sum(axis=1), 1.0)
    assert out["shape_decision"].tolist() == ["disc", "ring"]
    assert out["grade_decision"].tolist() == ["high", "low"]  # two classes: argmax
    np.testing.assert_allclose(out["shape_confidence"], shape.max(axis=1))
    assert out["shape_refer"].tolist() == (shape.max(axis=1) < 0.6).tolist()
    assert out["grade_refer"].tolist() == [True, True]  # no cut reached the target
    assert out["size_value"].tolist() == [31.5, 12.25]  # a value, uncalibrated, in mm
    with pytest.raises(ValueError, match="take 6 columns"):
        contract.answer(raw[:, :5], spec)


def test_a_multihead_spec_round_trips_and_a_single_heads_keeps_its_format():
    spec = _heads_spec()
    data = spec.to_dict()
    assert [h["name"] for h in data["heads"]] == ["shape", "grade", "size"]
    assert contract.ServingSpec.from_dict(data) == spec
    single = _spec()
    assert "heads" not in single.to_dict()  # as models logged before multi-head ones
    old = {"classes": ["normal", "pneumonia"], "temperature": 2.0, "refer_cut": 0.7,
           "target_accuracy": 0.95, "held_out_coverage": 0.8, "positive_class": "pneumonia",
           "threshold": 0.3, "chosen_on": "validation"}
    assert contract.ServingSpec.from_dict(old) == single
    with pytest.raises(ValueError, match="needs >= 2 classes, a temperature"):
        contract.HeadSpec("shape", "classification", classes=("a", "b"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        contract.HeadSpec("shape", "classification", classes=("a", "b"), temperature=0.0,
                          refer_cut=0.5)
    with pytest.raises(ValueError, match="no classes"):
        contract.HeadSpec("size", "regression", classes=("a",))


def test_the_signature_declares_every_served_column():
    from orchestrator.tracking.ensemble_model import signature

    spec = _heads_spec()
    outputs = signature(spec).outputs
    assert outputs.input_names() == [c for c, _ in contract.output_columns(spec)]
    types = dict(zip(outputs.input_names(), (str(t) for t in outputs.input_types())))
    assert types["shape_refer"].endswith("boolean") and types["size_value"].endswith("double")
    assert types["grade_decision"].endswith("string")
    single = signature(["normal", "pneumonia"]).outputs.input_names()
    assert single == ["prob_normal", "prob_pneumonia", "decision", "confidence", "refer"]
    assert signature(_spec()).outputs.input_names() == single


def test_the_card_of_a_multihead_model_lists_every_head():
    test = {"mean_skill": Interval(0.61, 0.52, 0.7), "loss": Interval(0.9, 0.8, 1.0),
            "shape_balanced_accuracy": Interval(0.81, 0.7, 0.9),
            "grade_balanced_accuracy": Interval(0.66, 0.55, 0.77),
            "size_mae": Interval(3.2, 2.5, 4.1), "size_r2": Interval(0.4, 0.2, 0.55)}
    facts = _facts(task="multihead/default", metric="mean_skill", spec=_heads_spec(),
                   held_out={"mean_skill": 0.65, "shape_balanced_accuracy": 0.85},
                   test=test)
    card = model_card(facts)
    assert card.splitlines()[0] == ("MedSweep ensemble for multihead/default: test mean_skill "
                                    "0.610 [0.520, 0.700]; SYNTHETIC phantom data.")
    for text in ("3 heads", "- `shape`: classification, 3 classes: `disc`, `square`, `ring`",
                 "`size_value`", "- `size`: regression, in mm",
                 "### shape (classification, 3 classes", "- balanced_accuracy: validation "
                 "0.850; test 0.810 [0.700, 0.900]", "### size (regression, in mm)",
                 "- mae: test 3.200 [2.500, 4.100]", "- mean_skill: validation 0.650; test 0.610",
                 "T = 2.0000 (fitted on validation predictions of this head)",
                 "`shape_refer` is true when `shape_confidence` is below 0.6000",
                 "`grade_refer` is always true", "`size_value`: the members' weighted mean, "
                 "in mm"):
        assert text in card, text
    assert "Operating point" not in card and "## Calibration and referral" in card
    assert "each head's temperature and refer cut" in card and "threshold" not in card
    tags = card_tags(facts)
    assert tags["test_mean_skill"] == "0.610 [0.520, 0.700]"
    assert tags["heads"] == "shape,grade,size" and "positive_class" not in tags


# --- prediction sets -------------------------------------------------------------------------
def test_a_spec_with_sets_answers_the_set_and_its_size_as_json_text():
    import json

    from orchestrator.clinical.conformal import EVERY_CLASS, SetFit, in_set

    sets = SetFit(0.9, (0.55,), (200,))
    spec = _spec(classes=("a", "b", "c"), positive_class=None, threshold=None, temperature=1.0,
                 sets=sets)
    raw = np.array([[0.2, 0.5, 0.3], [0.05, 0.9, 0.05], [0.34, 0.33, 0.33]])
    out = contract.answer(raw, spec)
    assert list(out.columns) == ["prob_a", "prob_b", "prob_c", "decision", "confidence",
                                 "refer", "prediction_set", "set_size"]
    assert [c for c, _ in contract.output_columns(spec)] == list(out.columns)
    # 0.5 then 0.3: 0.8 > 0.55 at c, so c crosses and is in; 0.9 > 0.55 at once; 0.34 + 0.33
    assert out["prediction_set"].tolist() == ['["b", "c"]', '["b"]', '["a", "b"]']
    assert [json.loads(s) for s in out["prediction_set"]] == [["b", "c"], ["b"], ["a", "b"]]
    assert out["set_size"].tolist() == [2, 1, 2] and out["set_size"].dtype == np.int64
    assert (out["set_size"].to_numpy() == in_set(raw, sets).sum(axis=1)).all()
    assert contract.ServingSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["sets"] == {"coverage": 0.9, "quantiles": [0.55], "cases": [200],
                                      "conditional": False}
    every = contract.answer(raw, _spec(classes=("a", "b", "c"), positive_class=None,
                                       threshold=None, sets=SetFit(0.9, (EVERY_CLASS,), (5,))))
    assert every["set_size"].tolist() == [3, 3, 3]


def test_a_spec_without_sets_answers_as_before_and_keeps_its_format():
    assert "sets" not in _spec().to_dict()
    assert "sets" not in _heads_spec().to_dict() and all(
        "sets" not in h for h in _heads_spec().to_dict()["heads"])
    assert "prediction_set" not in contract.answer(np.array([[0.9, 0.1]]), _spec()).columns


def test_each_classification_head_answers_its_own_sets():
    from orchestrator.clinical.conformal import SetFit

    base = _heads_spec()
    shape = SetFit(0.8, (0.3, 0.2, 0.1), (40, 30, 9), conditional=True)
    heads = tuple(contract.HeadSpec(**{**h.__dict__, "sets": shape}) if h.name == "shape" else h
                  for h in base.heads)
    spec = contract.ServingSpec(**{**base.__dict__, "heads": heads, "sets": shape})
    names = [c for c, _ in contract.output_columns(spec)]
    assert names[5:8] == ["shape_refer", "shape_prediction_set", "shape_set_size"]
    assert "grade_prediction_set" not in names and names[-1] == "size_value"
    out = contract.answer(np.array([[0.7, 0.2, 0.1, 0.45, 0.55, 31.5]]), spec)
    calibrated = apply_temperature(np.array([[0.7, 0.2, 0.1]]), 2.0)
    # disc: nothing above (0 <= 0.3); square: disc above it (> 0.2); ring: disc + square > 0.1
    assert calibrated[0, 0] > 0.2 and out["shape_prediction_set"].tolist() == ['["disc"]']
    again = contract.ServingSpec.from_dict(spec.to_dict())
    assert again == spec and again.heads[0].sets == shape
    from orchestrator.tracking.ensemble_model import signature

    types = dict(zip(signature(spec).outputs.input_names(),
                     (str(t) for t in signature(spec).outputs.input_types())))
    assert types["shape_set_size"].endswith("long")
    assert types["shape_prediction_set"].endswith("string")
    with pytest.raises(ValueError, match="head size: a regression head has no prediction sets"):
        contract.HeadSpec("size", "regression", unit="mm", sets=SetFit(0.9, (0.5,), (10,)))
    with pytest.raises(ValueError, match="head grade: 3 set quantiles for 2 classes"):
        contract.HeadSpec("grade", "classification", classes=("low", "high"), temperature=1.0,
                          refer_cut=0.5, sets=shape)


def test_the_card_says_how_sets_are_made_and_flags_an_infinite_quantile():
    from orchestrator.clinical.conformal import EVERY_CLASS, SetFit

    card = model_card(_facts(spec=_spec(sets=SetFit(0.9, (0.8123,), (60,)))))
    for text in ("## Prediction sets", "`prediction_set` lists, most probable first",
                 "90% nominal coverage", "quantile 0.8123 from 60 validation cases",
                 "`set_size` counts them", "exchangeable"):
        assert text in card, text
    assert "Prediction sets" not in model_card(_facts())
    tiny = model_card(_facts(spec=_spec(sets=SetFit(0.9, (EVERY_CLASS,), (6,)))))
    assert "the quantile is infinite: 6 validation cases are fewer than the 9 it needs, so " \
           "every set holds every class" in tiny


# --- per group (patient, lesion) -------------------------------------------------------------
def test_the_spec_records_a_group_rule_only_when_one_was_chosen():
    assert "group_rule" not in _spec().to_dict()  # as every model logged before
    chosen = _spec(group_rule="max")
    assert chosen.to_dict()["group_rule"] == "max"
    assert contract.ServingSpec.from_dict(chosen.to_dict()) == chosen
    assert chosen.answered_heads[0].group_rule == "max"
    with pytest.raises(ValueError, match="unknown group rule 'median'; valid: mean, max"):
        _spec(group_rule="median")
    with pytest.raises(ValueError, match="a regression head has no group rule"):
        contract.HeadSpec("size", "regression", unit="mm", group_rule="mean")


def test_a_group_is_combined_by_the_recorded_rule_decided_and_referred():
    from orchestrator.serving.per_group import per_group, unrecorded

    # images as served (calibrated): p1 has a calm and an alarming view, p2 one calm view
    rows = pd.DataFrame({"prob_normal": [0.9, 0.2, 0.8], "prob_pneumonia": [0.1, 0.8, 0.2],
                         "out_of_distribution": [False, False, False]})
    spec = _spec(group_rule="max")  # threshold 0.3 on pneumonia, refer below 0.7
    out = per_group(rows, ["p1", "p1", "p2"], spec)
    assert out["group"].tolist() == ["p1", "p2"] and out["n_images"].tolist() == [2, 1]
    np.testing.assert_allclose(out["prob_pneumonia"], [0.8 / 1.7, 0.2])
    assert out["decision"].tolist() == ["pneumonia", "normal"]
    np.testing.assert_allclose(out["confidence"], [0.8 / 1.7, 0.8])
    assert out["refer"].tolist() == [True, False] and set(out["group_rule"]) == {"max"}
    assert not unrecorded(spec) and unrecorded(_spec())
    mean = per_group(rows, ["p1", "p1", "p2"], _spec())  # no recorded rule: the mean
    np.testing.assert_allclose(mean["prob_pneumonia"], [0.45, 0.2])
    assert mean["decision"].tolist() == ["pneumonia", "normal"] and set(mean["group_rule"]) == {
        "mean"}
    flagged = per_group(rows.assign(out_of_distribution=[False, False, True]),
                        ["p1", "p1", "p2"], spec)  # an OOD image refers its patient
    assert flagged["refer"].tolist() == [True, True]
    assert flagged["out_of_distribution"].tolist() == [False, True]


def test_each_head_of_a_multihead_model_is_grouped_and_a_value_averaged():
    from orchestrator.serving.per_group import per_group

    raw = np.array([[0.6, 0.3, 0.1, 0.9, 0.1, 10.0], [0.2, 0.7, 0.1, 0.8, 0.2, 14.0]])
    spec = _heads_spec()
    out = per_group(contract.answer(raw, spec), ["a", "a"], spec)
    served = contract.answer(raw, spec)
    np.testing.assert_allclose(out["shape_prob_disc"], served["shape_prob_disc"].mean())
    assert out["size_value"].tolist() == [12.0]
    assert {"shape_decision", "shape_refer", "grade_confidence", "grade_refer"} <= set(
        out.columns)
    assert out["grade_refer"].tolist() == [True]  # its cut 2.0 refers everything


def test_the_checklist_fills_each_item_from_the_records_and_marks_the_authors_items():
    import dataclasses

    from orchestrator.clinical.flow import flow_counts
    from orchestrator.serving.checklist import (HEADING, PERSON_ITEMS, TO_BE_STATED,
                                                ChecklistFacts)

    manifest = pd.DataFrame({"label": ["normal"] * 3 + ["pneumonia"] * 3,
                             "group": ["p1", "p1", "p2", "p3", "p4", "p5"],
                             "split": ["train", "train", "test", "train", "test", "test"],
                             "fold": ["0", "0", "", "1", "", ""]})
    lost = pd.DataFrame({"path": ["x.dcm"], "label": ["normal"], "reason": ["unreadable"],
                         "detail": ["no pixel data"]})
    flow = flow_counts(manifest, ("normal", "pneumonia"), lost)
    facts = ChecklistFacts(source="data folder `chest`", synthetic=False,
                           file_dates=("2019-01-02", "2021-03-04"), flow=flow, variant="2class",
                           group_key="patient_id", backbones={"t1": "densenet121"},
                           preprocessing="gray-clahe2.0x8", externals={"site_b": "0.810"})
    card = model_card(_facts(checklist=facts, test={
        "balanced_accuracy": Interval(0.88, 0.8, 0.95), "ece": Interval(0.1, 0.05, 0.15),
        "ece_calibrated": Interval(0.04, 0.02, 0.07)}))
    section = card[card.index(HEADING):card.index("## Lineage")]
    items = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", section, re.M))
    assert items["Data source"] == "data folder `chest`"
    assert items["Date range of the files"].startswith("2019-01-02 to 2021-03-04 (file mod")
    assert items["Eligibility"] == ("7 files found; left out before splitting: 1 unreadable "
                                    "(decoder: no pixel data: 1); 0 copy(ies) left out because "
                                    "a copy sits in a held-out split.")
    assert items["Outcome"] == "`normal`, `pneumonia`; positive class `pneumonia`"
    assert items["Sample size per split and class"] == (
        "train 3 (normal 2, pneumonia 1; 2 groups); test 3 (normal 1, pneumonia 2; 3 groups) | "
        "folds: fold 0 2 (normal 2, pneumonia 0; 1 groups); fold 1 1 (normal 0, pneumonia 1; "
        "1 groups)")
    assert items["Validation"].startswith("2-fold cross-validation outside the test split, "
                                          "choices made on validation predictions; grouped by "
                                          "`patient_id`: 5 groups for 6 images")
    assert items["Model"].startswith("2 member(s): `t1` (densenet121, 64 px, weight 0.750); "
                                      "`t2` (backbone not recorded, 96 px")
    assert items["Preprocessing"] == ("`gray-clahe2.0x8`; DICOM window `file`, multi-frame "
                                      "files refused (no effect on other formats)")
    assert items["Performance"].startswith("test balanced_accuracy 0.880 [0.800, 0.950]")
    assert items["Calibration"].endswith("test ece 0.100 [0.050, 0.150], ece_calibrated 0.040 "
                                         "[0.020, 0.070]")
    assert items["External validation"] == "site_b: 0.810"
    assert [k for k, v in items.items() if v == TO_BE_STATED] == list(PERSON_ITEMS)
    assert HEADING not in model_card(_facts())  # no facts recorded: no checklist
    one_day = model_card(_facts(checklist=dataclasses.replace(
        facts, file_dates=("2020-05-06", "2020-05-06"))))
    assert "- **Date range of the files**: 2020-05-06 (every file) (file modification" in one_day
