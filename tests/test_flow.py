"""The participant flow and the splits' characteristics, counted on a small table whose numbers
are known by construction."""
from __future__ import annotations

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
