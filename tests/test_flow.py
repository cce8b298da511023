"""The participant flow and the splits' characteristics, counted on a small table whose numbers
are known by construction."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from orchestrator.clinical.flow import COPY_LEFT_OUT, characteristics, flow_counts

CLASSES = ("a", "b")


def _manifest(folds: bool) -> pd.DataFrame:
    """12 images in 9 groups: train 6 (a 4, b 2; groups g1-g4), val 2 (a, b; g5, g6),
    test 4 (a 1, b 3; g7-g9); under folds train+val split into fold 0 (g1, g2, g5) and
    fold 1 (g3, g4, g6)."""
    rows = [("train", "a", "g1", "0"), ("train", "a", "g1", "0"), ("train", "a", "g2", "0"),
            ("train", "a", "g3", "1"), ("train", "b", "g4", "1"), ("train", "b", "g4", "1"),
            ("val", "a", "g5", "0"), ("val", "b", "g6", "1"),
            ("test", "a", "g7", ""), ("test", "b", "g8", ""), ("test", "b", "g8", ""),
            ("test", "b", "g9", "")]
    frame = pd.DataFrame(rows, columns=["split", "label", "group", "fold"])
    frame["path"] = [f"img{i}.png" for i in range(len(frame))]
    frame["subgroup_sex"] = ["F", "M", "F", "M", "F", "", "M", "F", "F", "M", "M", "F"]
    return frame if folds else frame.assign(fold="")


UNREADABLE = pd.DataFrame({"path": ["x.png", "y.png", "z.png"], "label": ["a", "b", "b"],
                           "split": ["", "", ""], "reason": ["missing", "unreadable",
                                                             "unreadable"],
                           "detail": ["", "truncated file", "truncated file"]})
PAIRS = pd.DataFrame({"path_a": ["img0.png", "img9.png", "c.png"],
                      "path_b": ["img1.png", "img10.png", "img8.png"]})
LEFT_OUT = pd.DataFrame({"path": ["c.png"], "label": ["b"], "group": ["g8"]})


def test_the_flow_counts_what_was_found_left_out_and_where_each_image_went():
    flow = flow_counts(_manifest(folds=True), CLASSES, UNREADABLE, PAIRS, LEFT_OUT)
    assert flow.found.images == 16 and flow.found.per_class == {"a": 7, "b": 9}
    assert flow.found.groups == 9 + 4  # the used groups, plus one per file left out
    assert flow.left_out == {"missing": 1, "unreadable": 2, COPY_LEFT_OUT: 1}
    assert flow.left_out_total == 4 and flow.unreadable_details == {"truncated file": 2}
    assert flow.duplicate_pairs == 3
    assert (flow.used.images, flow.used.groups, dict(flow.used.per_class)) == (12, 9,
                                                                                {"a": 6, "b": 6})
    got = {s.name: (s.images, s.groups, dict(s.per_class)) for s in flow.splits}
    assert got == {"train": (6, 4, {"a": 4, "b": 2}), "val": (2, 2, {"a": 1, "b": 1}),
                   "test": (4, 3, {"a": 1, "b": 3})}
    folds = {s.name: (s.images, s.groups, dict(s.per_class)) for s in flow.folds}
    assert folds == {"fold 0": (4, 3, {"a": 4, "b": 0}), "fold 1": (4, 3, {"a": 1, "b": 3})}


def test_a_holdout_without_records_has_no_folds_and_nothing_left_out():
    flow = flow_counts(_manifest(folds=False), CLASSES)
    assert flow.folds == () and flow.left_out == {} and flow.duplicate_pairs == 0
    assert flow.found == type(flow.found)("found", 12, 9, {"a": 6, "b": 6})


def test_characteristics_give_each_split_its_class_mix_and_subgroup_columns():
    table = characteristics(_manifest(folds=False), CLASSES).set_index("split")
    assert list(table.index) == ["train", "val", "test", "all"]
    assert table.loc["test", "images"] == 4 and table.loc["test", "groups"] == 3
    assert table.loc["test", "class a"] == "1 (25%)" and table.loc["test", "class b"] == "3 (75%)"
    assert table.loc["train", "sex unknown"] == "1 (17%)"
    assert table.loc["val", "sex unknown"] == "0 (0%)"
    assert table.loc["all", "sex F"] == "6 (50%)"


# --- the report's sections and the failure gallery ----------------------------------------------
def test_the_flow_diagram_shows_every_box_with_its_counts():
    from orchestrator.clinical.flow_sections import flow_section
    from orchestrator.clinical.html import render

    flow = flow_counts(_manifest(folds=True), CLASSES, UNREADABLE, PAIRS, LEFT_OUT)
    page = render("t", [flow_section(flow)])
    for text in ("Files found</b><br>16 images, 13 groups", "Left out: 4</b>", "missing: 1",
                 "unreadable: 2", f"{COPY_LEFT_OUT}: 1", "unreadable, truncated file: 2",
                 "Used (split)</b><br>12 images, 9 groups", "Duplicate pairs: 3",
                 "copies share a group", "<b>test</b><br>4 images, 3 groups",
                 "a: 1<br>b: 3", "<b>fold 1</b><br>4 images, 3 groups"):
        assert text in page, text
    kept = render("t", [flow_section(flow_counts(_manifest(False), CLASSES), True)])
    assert "copies kept apart" in kept and "fold 0" not in kept and "Left out</b><br>none" in kept


def test_worst_errors_are_the_wrong_decisions_most_confident_first():
    from orchestrator.clinical.failures import worst_errors

    y = np.array([0, 1, 1, 0, 1, 0, 1])
    decision = np.array([1, 1, 0, 1, 0, 0, 0])  # wrong at 0, 2, 3, 4, 6
    confidence = np.array([0.6, 0.99, 0.9, 0.6, 0.95, 0.98, 0.7])
    assert worst_errors(y, decision, confidence, 4).tolist() == [4, 2, 6, 0]  # tie: test order
    assert worst_errors(y, y, confidence).tolist() == []


def test_the_failure_gallery_draws_the_confident_errors_with_grad_cam(tmp_path):
    from orchestrator.clinical.failures import GALLERY_FILE, failure_gallery
    from orchestrator.models.classifier import build_model

    keras.utils.set_random_seed(1)
    model = build_model("baseline_cnn", 2, 32, weights="none", head_units=8, dropout=0.0)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 0, 1, 1, 0])
    decision, confidence = np.array([1, 0, 0, 1, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    figure, shown = failure_gallery(model, images, y, decision, confidence, ("neg", "pos"),
                                    [f"d/img{i}.png" for i in range(5)], tmp_path)
    assert shown == 3 and figure == tmp_path / GALLERY_FILE and figure.stat().st_size > 1000
    assert failure_gallery(model, images, y, y, confidence, ("neg", "pos"), ["p"] * 5,
                           tmp_path / "none") == (None, 0)


# --- the card's checklist facts ------------------------------------------------------------------
def test_the_data_source_names_the_folder_never_its_path_and_dates_are_a_range(tmp_path):
    import os

    from orchestrator.ensemble.recorded import SYNTHETIC_SOURCE, data_source, file_dates
    from orchestrator.serving.checklist import externals_from_tags

    text = data_source(Path("/home/alice/scans/chest_2024"), synthetic=False)
    assert "`chest_2024`" in text and "/home" not in text and "alice" not in text
    assert data_source(tmp_path, synthetic=True) == SYNTHETIC_SOURCE
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"x"), b.write_bytes(b"y")
    os.utime(a, (1_600_000_000, 1_600_000_000))  # 2020-09-13 UTC
    os.utime(b, (1_700_000_000, 1_700_000_000))  # 2023-11-14 UTC
    assert file_dates([str(a), str(b), str(tmp_path / "gone.png")]) == ("2020-09-13",
                                                                          "2023-11-14")
    assert file_dates([str(tmp_path / "gone.png")]) is None
    assert externals_from_tags({"external.site_b": "0.8 [0.7, 0.9]", "task": "x"}) == {
        "site_b": "0.8 [0.7, 0.9]"}
