"""Contract tests over the task registry itself."""
from __future__ import annotations

import dataclasses

import pytest

from orchestrator.errors import ConfigError
from tasks import TASKS, default_variant, get_task, task_names, variant_names
from tasks.base import METRICS, MULTIHEAD_METRIC, TTA_KINDS

ALL = [(name, variant) for name, variants in TASKS.items() for variant in variants]


def test_the_six_tasks_are_registered():
    assert task_names() == ["brain", "skin", "leukemia", "pneumonia", "folder", "multihead"]


@pytest.mark.parametrize("name,variant", ALL)
def test_every_task_is_coherent(name, variant):
    task = get_task(name, variant)
    assert task.name == name and task.variant == variant
    assert task.metric in (METRICS if not task.is_multihead else (MULTIHEAD_METRIC,))
    assert task.mode in ("max", "min")
    assert set(task.tta_kinds) <= set(TTA_KINDS)
    assert task.resolutions and all(r >= 32 for r in task.resolutions)
    if task.classes:  # folder discovers its classes from the data
        mapped = {c for c in task.label_map.values() if c is not None}
        assert mapped == set(task.classes)
    if task.positive_class is not None:
        assert task.is_binary


def test_primary_metrics_are_those_the_issue_names():
    assert get_task("brain").metric == "accuracy"
    assert get_task("skin").metric == "pr_auc"
    assert get_task("leukemia").metric == "balanced_accuracy"
    assert get_task("pneumonia").metric == "roc_auc"
    assert get_task("folder").metric == "balanced_accuracy"


def test_variants_and_defaults():
    assert get_task("brain").classes == ("glioma", "meningioma", "pituitary")
    assert get_task("brain/4class").num_classes == 4
    assert get_task("brain").class_of("notumor") is None
    assert default_variant("leukemia") == "4class"
    binary = get_task("leukemia", "binary")
    assert binary.classes == ("Benign", "ALL") and binary.positive_class == "ALL"
    assert {binary.class_of(s) for s in ("Early", "Pre", "Pro")} == {"ALL"}
    assert set(variant_names("brain")) == {"3class", "4class"}


def test_source_label_aliases_cover_both_brain_releases_and_long_leukemia_names():
    brain = get_task("brain")
    assert brain.canonical_source_label("glioma_tumor") == "glioma"
    assert brain.canonical_source_label("No_Tumor") == "notumor"
    assert brain.canonical_source_label("astrocytoma") is None
    leuk = get_task("leukemia")
    assert leuk.canonical_source_label("[Malignant] early Pre-B") == "Early"
    assert leuk.canonical_source_label("Pro-B") == "Pro"


def test_skin_maps_malignant_codes_and_groups_by_lesion():
    skin = get_task("skin")
    assert {dx for dx in skin.source_labels if skin.class_of(dx) == "malignant"} == {
        "mel", "bcc", "akiec"}
    assert skin.group_key == "lesion_id" and skin.positive_index == 1


def test_pneumonia_uses_seed_004_clahe_and_forbids_flips():
    pre = get_task("pneumonia").preprocessing
    assert (pre.clahe, pre.clahe_clip, pre.clahe_tiles, pre.grayscale) == (True, 2.0, 8, True)
    assert not {"hflip", "vflip"} & set(get_task("pneumonia").tta_kinds)


def test_folder_task_takes_classes_from_data():
    task = get_task("folder").with_classes(("cat", "dog"), positive_class="dog")
    assert task.classes == ("cat", "dog") and task.positive_index == 1
    assert task.class_of("cat") == "cat"


@pytest.mark.parametrize("bad,needle", [("bogus", "valid tasks: brain"),
                                        ("brain/5class", "valid variants: 3class, 4class")])
def test_unknown_names_list_the_valid_ones(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        get_task(bad)


def test_unknown_class_names_the_expected_ones():
    with pytest.raises(ConfigError, match="expected one of"):
        get_task("brain").class_index("notumor")


def test_multihead_task_and_its_csv_placeholder():
    task = get_task("multihead")
    assert task.is_multihead and [h.name for h in task.heads] == ["shape", "texture", "size"]
    assert task.classes == task.head("shape").classes and task.layout == "multihead_csv"
    csv = get_task("multihead/csv")
    assert csv.is_multihead and csv.heads == () and csv.classes == ()
    assert csv.layout == task.layout and csv.metric == MULTIHEAD_METRIC
    mine = csv.with_heads(task.heads[1:])  # heads from the data: texture leads
    assert mine.classes == ("smooth", "stripes", "dots") and mine.heads == task.heads[1:]
    with pytest.raises(ConfigError, match="at least one classification head"):
        csv.with_heads(task.heads[2:])
    with pytest.raises(ConfigError, match="no classes until it has its heads"):
        dataclasses.replace(csv, classes=("a", "b"), source_labels=("a", "b"),
                            label_map={"a": "a", "b": "b"})
