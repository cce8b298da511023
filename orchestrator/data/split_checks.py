"""Whether a realised split (or set of folds) is the one that was asked for.

A few large groups (patients, lesions, copy clusters) move whole and can pull a split far from
its asked share: its figures then describe other data than planned, and a class can be left
with almost nothing to train on. Both are refused here, whatever made the groups, naming the
largest groups and where they went.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from orchestrator.errors import DataError

# A drawn split (and a fold) must hold its asked share of the images, and of each class, within
# SHARE_TOLERANCE plus the weight of two average groups (whole groups cannot split finer);
# every class needs MIN_TRAIN_PER_CLASS training images (in every fold's training part too).
SHARE_TOLERANCE = 0.05
MIN_TRAIN_PER_CLASS = 5


def check_shares(rows: pd.DataFrame, column: str, asked: Mapping[str, float],
                 what: str) -> None:
    """Refuse `rows` whose `column` values (splits, folds) hold other shares of the images, or
    of a class, than `asked`: a few large groups (patients, lesions, copy clusters) can pull
    a split far from what was asked, and its figures then describe other data than planned."""
    n = len(rows)
    group_weight = rows.groupby("group").size().mean() / n
    for name, share in asked.items():
        got = float((rows[column] == name).mean())
        tolerance = SHARE_TOLERANCE + 2 * group_weight
        if abs(got - share) > tolerance:
            raise DataError(f"{column} {name!r} came out with {got:.1%} of the {n} {what} "
                            f"(asked {share:.1%} +- {tolerance:.1%}): "
                            + _largest_groups(rows, column))
    for label, members in rows.groupby("label"):
        weight = members.groupby("group").size().mean() / len(members)
        tolerance = SHARE_TOLERANCE + 2 * weight
        for name, share in asked.items():
            got = float((members[column] == name).mean())
            if abs(got - share) > tolerance:
                raise DataError(f"class {label!r}: {column} {name!r} came out with {got:.1%} "
                                f"of its {len(members)} {what} (asked {share:.1%} +- "
                                f"{tolerance:.1%}): " + _largest_groups(members, column))


def check_training_counts(table: pd.DataFrame, training: pd.Series, what: str) -> None:
    """Refuse a class with fewer than MIN_TRAIN_PER_CLASS images to train on."""
    counts = table.loc[training, "label"].value_counts().reindex(
        sorted(set(table["label"])), fill_value=0)
    short = counts[counts < MIN_TRAIN_PER_CLASS]
    if len(short):
        shown = ", ".join(f"{label!r} {n}" for label, n in short.items())
        raise DataError(f"{what} holds too few images of class(es) {shown} (at least "
                        f"{MIN_TRAIN_PER_CLASS} each are needed to learn a class): "
                        + _largest_groups(table, "split"))


def _largest_groups(rows: pd.DataFrame, column: str) -> str:
    sizes = rows.groupby("group").size().sort_values(ascending=False, kind="stable")
    where = rows.groupby("group")[column].first()
    shown = "; ".join(f"group {g!r} has {n} image(s) ({n / len(rows):.1%}), all in "
                      + (f"{column} {where[g]!r}" if where[g] else f"no {column}")
                      for g, n in sizes.head(3).items())
    return (f"the largest groups decide it: {shown}. Groups (patients, lesions, copy clusters) "
            "move whole; if they are copy clusters, raise --duplicate-threshold, else add "
            "images or give the splits explicitly")
