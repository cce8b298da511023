"""Per-patient maths (`orchestrator.clinical.patients`) on known numbers: the combination rules,
the group label, and the choice of rule on held-out groups alone."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.clinical.patients import (RULES, choose_rule, combine, group_index,
                                            group_labels, mean_values)
from orchestrator.errors import ConfigError

PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
GROUPS = ["p2", "p1", "p2", "p3"]  # p2 holds two views


def test_groups_keep_the_order_of_first_appearance():
    g = group_index(GROUPS)
    assert g.names.tolist() == ["p2", "p1", "p3"] and g.index.tolist() == [0, 1, 0, 2]
    assert g.sizes.tolist() == [2, 1, 1] and g.several
    assert not group_index(["a", "b", "c"]).several
    assert group_index(np.array([7, 7, 3])).names.tolist() == [7, 3]


def test_mean_and_max_on_known_numbers():
    g = group_index(GROUPS)
    np.testing.assert_allclose(combine(PROBS, g, "mean"), [[0.55, 0.45], [0.6, 0.4],
                                                           [0.7, 0.3]])
    # p2: per-class max (0.9, 0.8), renormalised -> (0.9/1.7, 0.8/1.7)
    np.testing.assert_allclose(combine(PROBS, g, "max"), [[0.9 / 1.7, 0.8 / 1.7], [0.6, 0.4],
                                                          [0.7, 0.3]])
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(combine(three, group_index(["a", "a"]), "max"),
                               [[0.5 / 1.6, 0.3 / 1.6, 0.8 / 1.6]])
    for rule in RULES:  # a one-image group is its image, whatever the rule
        np.testing.assert_allclose(combine(PROBS, group_index(list("abcd")), rule), PROBS)
    with pytest.raises(ConfigError, match="unknown group rule 'median'; valid: mean, max"):
        combine(PROBS, g, "median")
    np.testing.assert_allclose(mean_values([1.0, 3.0, 5.0, 2.0], g), [3.0, 3.0, 2.0])


def test_a_group_label_and_the_groups_whose_images_disagree():
    g = group_index(["a", "a", "b", "b", "b", "c", "c"])
    y = np.array([0, 1, 2, 2, 0, 1, 1])
    binaryish = group_labels(np.array([0, 1, 0, 0, 0, 1, 1]), g, positive=1)
    assert binaryish.labels.tolist() == [1, 0, 1] and binaryish.mixed == ("a",)
    most = group_labels(y, g)
    assert most.labels.tolist() == [0, 2, 1]  # a: tie 0/1 -> the class listed first
    assert most.mixed == ("a", "b")


def test_the_rule_is_chosen_by_held_out_group_log_loss():
    # patients with one alarming view among calm ones: max keeps the alarm, mean dilutes it
    groups = np.repeat(np.arange(6), 3)
    y = np.repeat([1, 1, 1, 0, 0, 0], 3)
    calm, alarm = [0.8, 0.2], [0.1, 0.9]
    probs = np.array([alarm, calm, calm] * 3 + [calm] * 9)
    choice = choose_rule(y, probs, groups, positive=1)
    mean_loss = -(3 * np.log((0.9 + 0.2 + 0.2) / 3) + 3 * np.log(0.8)) / 6
    assert choice.scores["mean"] == pytest.approx(mean_loss)
    assert choice.rule == "max" and choice.scores["max"] < choice.scores["mean"]
    assert (choice.groups, choice.images, choice.evidence) == (6, 18, True)
    assert "max, chosen on 6 out-of-fold groups of 18 images" in choice.sentence("out-of-fold")
    # views that agree: averaging their noise wins
    steady = np.array([[0.3, 0.7], [0.35, 0.65], [0.25, 0.75]] * 3 + [[0.7, 0.3]] * 9)
    assert choose_rule(y, steady, groups, positive=1).rule == "mean"


def test_one_image_groups_choose_nothing_and_say_so():
    choice = choose_rule(np.array([0, 1, 1]), PROBS[:3], ["a", "b", "c"])
    assert choice.rule == "mean" and choice.scores == {} and not choice.evidence
    assert "every validation group is one image" in choice.sentence("validation")


def test_the_choice_sees_no_test_data():
    """The rule is a function of held-out arrays only: permuting any test groups or labels
    cannot move it, and permuting the held-out images together with their groups does not
    either."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, 120)
    y = (groups % 2).astype(int)
    p = np.clip(0.5 + (y - 0.5) * rng.uniform(0.1, 0.9, 120), 0.01, 0.99)
    probs = np.c_[1 - p, p]
    chosen = choose_rule(y, probs, groups, positive=1)
    order = rng.permutation(120)
    again = choose_rule(y[order], probs[order], groups[order], positive=1)
    assert again.rule == chosen.rule
    assert again.scores == pytest.approx(chosen.scores)
