"""One answer per group (patient, lesion) from the served per-image answers, as the clinic
decides: `python -m orchestrator.predict ... --per-group COLUMN`.

Each classification head's calibrated probabilities (`prob_<class>`, the served columns)
combine by the rule the model's spec records (`group_rule`, chosen on held-out groups at build
time; `mean` for a model without one: `clinical.patients`); the group is decided at the model's
operating point (else the most probable class), its confidence is the probability of that
decision, and it is referred below the model's refer cut, or when any of its images is out of
distribution. A regression head's value is the group's mean. Prediction sets are not combined:
their coverage was fitted on images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical.patients import DEFAULT_RULE, combine, group_index, mean_values
from orchestrator.clinical.referral import decide
from orchestrator.serving.contract import (CONFIDENCE, DECISION, OUT_OF_DISTRIBUTION, REFER,
                                           VALUE, ServingSpec, probability_columns)

GROUP, N_IMAGES, GROUP_RULE = "group", "n_images", "group_rule"


def unrecorded(spec: ServingSpec) -> bool:
    """The model records no rule for some classification head (logged before rules were
    chosen, or its held-out groups were all single images): `mean` is used."""
    return any(h.group_rule is None for h in spec.answered_heads if h.is_classification)


def per_group(rows: pd.DataFrame, groups: Sequence, spec: ServingSpec) -> pd.DataFrame:
    """`rows`: the served per-image answer; `groups`: each row's group. One row per group, in
    order of first appearance: group, n_images, then each head's combined columns."""
    found = group_index(groups)
    flagged = np.zeros(len(found.names), dtype=bool)
    if OUT_OF_DISTRIBUTION in rows.columns:
        flagged = mean_values(rows[OUT_OF_DISTRIBUTION].astype(float), found) > 0
    out: dict[str, object] = {GROUP: found.names, N_IMAGES: found.sizes}
    for head in spec.answered_heads:
        if not head.is_classification:
            out[head.column(VALUE)] = mean_values(rows[head.column(VALUE)], found)
            continue
        rule = head.group_rule or DEFAULT_RULE
        names = probability_columns(head.classes)
        combined = combine(rows[[head.column(c) for c in names]].to_numpy(np.float64), found,
                           rule)
        decision, confidence = decide(combined, head.threshold, head.positive_index)
        out.update({head.column(c): combined[:, k] for k, c in enumerate(names)})
        out[head.column(DECISION)] = [head.classes[k] for k in decision]
        out[head.column(CONFIDENCE)] = confidence
        out[head.column(REFER)] = (confidence < head.refer_cut) | flagged
        out[head.column(GROUP_RULE)] = rule
    if OUT_OF_DISTRIBUTION in rows.columns:
        out[OUT_OF_DISTRIBUTION] = flagged
    return pd.DataFrame(out)
