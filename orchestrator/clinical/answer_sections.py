"""The report's sections on what stands behind a served answer beyond its class: the
prediction sets (their quantile, test coverage and set sizes, and what the guarantee assumes)
and the out-of-distribution flag. Built from figures `evaluate` has already computed; each
takes the ensemble's test figures by metric (`test`: point, low, high, note)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from orchestrator.clinical.bootstrap import format_interval, row_note
from orchestrator.clinical.conformal import (SetFit, coverage_range, min_cases, quantile_rank,
                                             safe_name)
from orchestrator.clinical.evaluated import evaluated_heads
from orchestrator.clinical.html import Section
from orchestrator.clinical.result import HeadFit


# --- the out-of-distribution flag ----------------------------------------------------------------
def ood_section(inputs, test: pd.DataFrame) -> list[Section]:
    """What the served flag is, where its cut comes from, and how many test images it raises;
    nothing for an evaluation without one."""
    found = inputs.ood
    if found is None:
        return []
    cut, held = found.cut, inputs.held_out
    share = (format_interval(test.loc["ood_flagged"].point, test.loc["ood_flagged"].low,
                             test.loc["ood_flagged"].high, note=row_note(test.loc["ood_flagged"]))
             if "ood_flagged" in test.index else f"{found.test_share:.3f}")
    rate = (f"the {1 - cut.false_alarm:.0%} quantile of the scores of {cut.cases} {held} "
            f"images (the stated false-alarm rate, {cut.false_alarm:g}, on images like the "
            f"training data; {cut.held_out_flagged:.1%} of them lie above it)" if cut.backed else
            f"the largest score of {cut.cases} {held} images: too few for a {cut.false_alarm:g} "
            "false-alarm rate, which is therefore NOT guaranteed")
    return [Section("Out-of-distribution flag", [
        f"The served model sets `out_of_distribution` (and `refer`) when the Mahalanobis "
        f"distance of an image's `{found.layer}` features to the nearest training class mean "
        f"(shared, shrunk covariance; each member model's, averaged as their votes are) is "
        f"above {cut.cut:.3f}, or when the image is constant. The cut is {rate}. On test: "
        f"{share} of the images flagged; for a test split drawn like the training data this "
        f"should sit near {cut.false_alarm:g}.",
        "What the flag says: the image is unlike the images the models were trained on. What "
        "it does not say: that its class is one the model knows; an unseen class drawn like "
        "the training images can pass. How it does on shifted images (another task's, noise, "
        "blank, inverted, blurred) is measured by `bench/ood.py` (docs/benchmarks.md), not by "
        "this report."])]


# --- prediction sets ---------------------------------------------------------------------------
SETS_ASSUME = (
    "What the coverage guarantee assumes: the held-out and the test (or new) cases are "
    "exchangeable, i.e. drawn alike from one population; another site, scanner or prevalence "
    "breaks it. It is marginal: {coverage:.0%} of cases, not of each case, and (unless the sets "
    "are class-conditional) not of each class. {source} The members, weights and temperature "
    "were chosen on the same held-out cases, which the guarantee does not account for: the test "
    "coverage is the check.")
SETS_SOURCE = {
    "out-of-fold": "The held-out scores come from the fold models, each scoring the cases it "
                   "did not see, while the test and the served predictions average all of "
                   "them: the averaged ensemble is usually the better model, so its sets tend "
                   "to over-cover, which is not guaranteed.",
    "validation": "The held-out scores come from the same ensemble that answers the test and "
                  "served cases, on the validation split."}


def _sets_paragraph(name: str, classes, sets: SetFit, y, test: pd.DataFrame, held: str,
                    prefix: str) -> str:

    def shown(metric: str) -> str:
        row = test.loc[f"{prefix}{metric}"]
        return format_interval(row.point, row.low, row.high, note=row_note(row))

    column = (lambda c: f"{name}_{c}") if name else (lambda c: c)
    if sets.conditional:
        rule = ("one quantile per true class, each the score at rank ceil((n + 1) x coverage) "
                "of that class's n held-out scores (class-conditional, 'Mondrian'): "
                + ", ".join(f"{c} {q:.4f} (n = {n})" if q <= 1.0 else f"{c} infinite (n = {n})"
                            for c, q, n in zip(classes, sets.quantiles, sets.cases)))
    else:
        q, n = sets.quantiles[0], sets.cases[0]
        rule = (f"q = {q:.4f}, the score at rank ceil((n + 1) x {sets.coverage}) = "
                f"{quantile_rank(n, sets.coverage)} of the n = {n} held-out scores, smallest "
                "first" if q <= 1.0 else
                f"q is infinite: {n} held-out cases are fewer than the "
                f"{min_cases(sets.coverage)} a {sets.coverage:.0%} quantile needs, so every set "
                "holds every class")
    flagged = [classes[i] for i in sets.every_class] if sets.conditional else []
    warn = (f" Too few held-out cases of {', '.join(flagged)} for a "
            f"{sets.coverage:.0%} quantile (at least {min_cases(sets.coverage)} each): those "
            "classes are in every set." if flagged else "")
    n_test = len(y)
    low, high = (coverage_range(n_test, sets.cases[0], sets.coverage) if not sets.conditional
                 else (float("nan"), float("nan")))
    spread = (f"; if the guarantee holds, a test split of {n_test} cases covers between "
              f"{low:.3f} and {high:.3f} in 99% of draws (beta-binomial)" if low == low else "")
    which = ("that class's own quantile (never empty: nothing is above the most probable "
             "class)" if sets.conditional else
             "the quantile: the classes in order of probability until their cumulative "
             "probability first exceeds it, that class included (never empty)")
    return (f"the served `{column('prediction_set')}` lists, most probable first, the classes "
            f"whose calibrated probability ranked above them is at most {which}; "
            f"`{column('set_size')}` counts them. Split-"
            "conformal adaptive prediction sets at nominal coverage "
            f"{sets.coverage:.0%}, fitted on {held} predictions: a held-out case's score is the "
            f"calibrated probability ranked above its true class; {rule}.{warn} On test: "
            f"coverage (the share of cases whose true class is in its set) "
            f"{shown('set_coverage')}, nominal {sets.coverage:.2f}{spread}; mean set size "
            f"{shown('set_size_mean')}.")


def _sets_tables(classes, sets: SetFit, y, test: pd.DataFrame,
                 prefix: str) -> list[pd.DataFrame]:

    def shown(metric: str) -> str:
        row = test.loc[metric]
        return format_interval(row.point, row.low, row.high, note=row_note(row))

    y = np.asarray(y)
    per_class = pd.DataFrame({
        "class": list(classes), "test cases": [int(np.sum(y == k)) for k in range(len(classes))],
        **({"held-out cases": list(sets.cases),
            "quantile": [f"{q:.4f}" if q <= 1.0 else "infinite" for q in sets.quantiles]}
           if sets.conditional else {}),
        "test coverage [95% CI]": [shown(f"{prefix}set_coverage_{safe_name(c)}")
                                   for c in classes]})
    sizes = pd.DataFrame({"set size": list(range(1, len(classes) + 1)),
                          "share of test cases [95% CI]": [
                              shown(f"{prefix}set_size_{k}_share")
                              for k in range(1, len(classes) + 1)]})
    return [per_class, sizes]


def sets_section(inputs, fits: Mapping[str, HeadFit], test: pd.DataFrame) -> list[Section]:
    """One section: per classification head its quantile, its test coverage with intervals
    (overall and per class) and the distribution of its set sizes; what the guarantee assumes.
    Nothing when no head has sets."""
    paragraphs, tables, nominal = [], [], None
    for eh in evaluated_heads(inputs.task):
        sets = fits[eh.head.name].sets if eh.head.is_classification else None
        if sets is None:
            continue
        nominal, name, y = sets.coverage, eh.head.name if eh.named else None, \
            eh.targets(inputs.y_test)
        text = _sets_paragraph(name or "", eh.head.classes, sets, y, test, inputs.held_out,
                               eh.prefix)
        paragraphs.append(f"Head {name}: {text}" if name else text[0].upper() + text[1:])
        tables += _sets_tables(eh.head.classes, sets, y, test, eh.prefix)
    if nominal is None:
        return []
    source = SETS_SOURCE.get(inputs.held_out, "")
    return [Section("Prediction sets", paragraphs + [SETS_ASSUME.format(coverage=nominal,
                                                                       source=source)],
                    tables=tables)]
