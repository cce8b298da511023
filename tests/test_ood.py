"""The out-of-distribution score and cut (`orchestrator.clinical.ood`): the distance against
scipy's, the shrinkage against scikit-learn's, the cut's false-alarm rate over simulated
draws, constant images, too few held-out cases, and a check on real images."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from orchestrator.clinical import ood

import real_images


def test_ledoit_wolf_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30)) * np.arange(1, 31)
    x -= x.mean(axis=0)
    mine, shrinkage = ood.ledoit_wolf(x)
    theirs, expected = sklearn_ledoit_wolf(x, assume_centered=True)
    assert shrinkage == pytest.approx(expected, rel=1e-9) and 0 < shrinkage < 1
    np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-9)


def test_the_distance_is_scipys_to_the_nearest_class_mean():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 5)) + np.array([[0] * 5, [4] * 5, [-4] * 5])[y]
    stats = ood.fit_statistics(x, y)
    new = rng.normal(size=(7, 5)) * 3
    by_hand = [min(scipy_mahalanobis(v, m, stats.precision) for m in stats.means) for v in new]
    np.testing.assert_allclose(ood.mahalanobis(stats, new), by_hand, rtol=1e-10)
    # the tied covariance is the within-class one, shrunk: the class means come out
    np.testing.assert_allclose(stats.means, [x[y == k].mean(axis=0) for k in range(3)])
    assert np.argmin([np.linalg.norm(stats.means[k] - [4] * 5) for k in range(3)]) == 1


def test_statistics_travel_in_an_npz(tmp_path):
    rng = np.random.default_rng(2)
    stats = ood.fit_statistics(rng.normal(size=(20, 4)), np.arange(20) % 2)
    stats.save(tmp_path / "s.npz")
    back = ood.OodStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.means, stats.means)
    np.testing.assert_array_equal(back.precision, stats.precision)
    assert back.shrinkage == stats.shrinkage


@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_the_cut_keeps_its_false_alarm_rate_over_simulated_draws(rate):
    """Fit the cut on n in-distribution scores, measure the share of fresh in-distribution
    scores above it; over many draws the mean is at most the rate, and no lower than
    rate - 1/(n+1) (the finite-sample conformal bounds)."""
    rng = np.random.default_rng(3)
    n, shares = 60, []
    for _ in range(2000):
        cut = ood.fit_cut(rng.chisquare(8, n), rate)
        assert cut.backed and cut.cases == n
        shares.append(np.mean(rng.chisquare(8, 4000) > cut.cut))
    mean = float(np.mean(shares))
    assert rate - 1 / (n + 1) - 0.005 <= mean <= rate + 0.005, mean


def test_too_few_held_out_cases_are_said_plainly():
    assert ood.min_cases(0.05) == 19 and ood.min_cases(0.1) == 9
    few = ood.fit_cut(np.arange(10.0), 0.05)
    assert not few.backed and few.cut == 9.0 and few.cases == 10
    assert ood.fit_cut(np.arange(19.0), 0.05).backed
    with pytest.raises(ValueError, match="0.7"):
        ood.fit_cut(np.arange(30.0), 0.7)
    with pytest.raises(ValueError, match="finite"):
        ood.fit_cut(np.array([1.0, np.nan]), 0.05)


def test_constant_images_are_flagged_whatever_their_score():
    images = np.stack([np.full((8, 8, 3), 40, np.uint8), np.arange(192, dtype=np.uint8)
                       .reshape(8, 8, 3), np.zeros((8, 8, 3), np.uint8)])
    constant = ood.constant_images(images)
    assert constant.tolist() == [True, False, True]
    assert ood.flag(np.array([0.0, 0.0, 9.0]), 1.0, constant).tolist() == [True, False, True]
    assert ood.flag(np.array([0.0, 2.0]), 1.0, [False, False]).tolist() == [False, True]


def test_the_ensemble_score_is_the_weighted_mean():
    np.testing.assert_allclose(ood.combine([np.array([1.0, 2.0]), np.array([3.0, 6.0])],
                                           [0.75, 0.25]), [1.5, 3.0])


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        ood.fit_statistics(np.zeros(3))
    with pytest.raises(ValueError, match="do not vary"):
        ood.fit_statistics(np.ones((5, 3)))
    stats = ood.fit_statistics(np.random.default_rng(0).normal(size=(9, 3)))
    with pytest.raises(ValueError, match="dimension 3"):
        ood.mahalanobis(stats, np.zeros((2, 4)))


def _digit_features(images: list[np.ndarray]) -> np.ndarray:
    """Real images as scikit-learn's digits are: 8 x 8 gray, 17 levels (0-16)."""
    small = [cv2.resize(im if im.ndim == 2 else cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), (8, 8),
                        interpolation=cv2.INTER_AREA) for im in images]
    return np.stack([np.round(s.astype(np.float64) * 16 / 255) for s in small]).reshape(
        len(images), -1)


def test_real_images_fit_on_digits_flag_photographs_noise_blank_and_inverted():
    """Real images that installed packages ship: statistics of scikit-learn's digits (their
    8 x 8 pixels as the embedding), the cut on held-out digits at 5%; held-out digits are
    flagged near 5%, windows of scikit-image's and scikit-learn's photographs, uniform noise,
    blank images and inverted digits nearly always. The full network version is bench/ood.py."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.images.reshape(len(data.images), -1), data.target
    order = np.random.default_rng(0).permutation(len(x))
    train, val, test = np.split(order, [int(0.6 * len(x)), int(0.8 * len(x))])
    stats = ood.fit_statistics(x[train], y[train])
    cut = ood.fit_cut(ood.mahalanobis(stats, x[val]), 0.05)

    def share(features: np.ndarray, images=None) -> float:
        constant = (ood.constant_images(images) if images is not None
                    else np.zeros(len(features), bool))
        return float(np.mean(ood.flag(ood.mahalanobis(stats, features), cut.cut, constant)))

    rng = np.random.default_rng(1)
    windows = real_images.windows()
    noise = rng.integers(0, 17, (300, 64)).astype(np.float64)
    blank = np.stack([np.full((8, 8), v, np.float64) for v in range(17)])
    found = {"held-out digits": share(x[test]),
             "photographs": share(_digit_features(windows)),
             "noise": share(noise), "blank": share(blank.reshape(17, -1), blank),
             "inverted": share(16 - x[test])}
    print("\nshare flagged, statistics of scikit-learn digits, cut at 5%:", {k: round(v, 3) for k, v in found.items()})
    assert 0.01 <= found["held-out digits"] <= 0.10, found
    for name in ("photographs", "noise", "blank", "inverted"):
        assert found[name] >= 0.95, (name, found)


def _spec(with_ood: bool):
    from orchestrator.serving import contract

    return contract.ServingSpec(
        classes=("a", "b", "c"), temperature=1.0, refer_cut=0.5, target_accuracy=0.9,
        held_out_coverage=0.8,
        ood=contract.OodSpec(cut=10.0, false_alarm=0.05, layer="pool", held_out_cases=40,
                             held_out_flagged=0.05) if with_ood else None)


def test_the_served_answer_adds_the_flag_and_refers_every_flagged_image():
    from orchestrator.serving import contract

    spec = _spec(True)
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    out = contract.answer(probs, spec, np.array([3.0, 12.0, 3.0, 1.0]),
                          np.array([False, False, False, True]))
    assert [c for c, _ in contract.output_columns(spec)][-2:] == ["out_of_distribution",
                                                                  "ood_score"]
    assert list(out.columns) == [c for c, _ in contract.output_columns(spec)]
    assert out["out_of_distribution"].tolist() == [False, True, False, True]
    assert out["refer"].tolist() == [False, True, True, True]  # flagged, or low confidence
    assert out["ood_score"].tolist() == [3.0, 12.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="OOD scores"):
        contract.answer(probs, spec)


def test_a_spec_without_an_ood_fit_reads_and_writes_as_before():
    from orchestrator.serving import contract

    old = _spec(False)
    assert "ood" not in old.to_dict()
    assert "out_of_distribution" not in [c for c, _ in contract.output_columns(old)]
    new = _spec(True)
    assert contract.ServingSpec.from_dict(new.to_dict()) == new
    assert new.to_dict()["ood"]["cut"] == 10.0
    with pytest.raises(ValueError, match="0.7"):
        contract.OodSpec(cut=1.0, false_alarm=0.7, layer="pool", held_out_cases=9,
                         held_out_flagged=0.0)


def test_the_ood_false_alarm_option_is_checked():
    import argparse

    from orchestrator.clinical.options import (ClinicalOptions, add_clinical_arguments,
                                               clinical_options)
    from orchestrator.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_clinical_arguments(parser)
    assert clinical_options(parser.parse_args([])).ood_false_alarm == 0.05
    assert clinical_options(parser.parse_args(["--ood-false-alarm", "0.01"])
                            ).ood_false_alarm == 0.01
    with pytest.raises(ConfigError, match="0.6"):
        ClinicalOptions(ood_false_alarm=0.6)


def test_the_card_and_console_state_the_rate_and_what_was_checked():
    import dataclasses

    from orchestrator.ensemble.report import ood_line
    from orchestrator.serving.card import ood_lines

    spec = _spec(True)
    card = "\n".join(ood_lines(spec))
    for text in ("## Out-of-distribution flag", "above 10.0000", "at most 5% of",
                 "40 validation images", "noise", "blank", "constant"):
        assert text in card, text
    assert ood_lines(_spec(False)) == []
    thin = dataclasses.replace(spec.ood, backed=False, held_out_cases=12)
    assert "not guaranteed" in "\n".join(ood_lines(dataclasses.replace(spec, ood=thin)))
    line = ood_line(spec.ood, 0.05)
    assert "above 10.000" in line and "0.05 false-alarm rate" in line and "5.0% of test" in line
    assert "NOT guaranteed: 12 held-out" in ood_line(thin, None)
