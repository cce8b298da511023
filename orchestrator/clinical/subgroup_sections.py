"""How report.html, evaluation.html and the console say what `subgroups.py` measured. Light:
no plotting, no models."""
from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.clinical.bootstrap import MIN_GROUPS, format_interval
from orchestrator.clinical.html import Section
from orchestrator.clinical.subgroups import MIN_CASES, MIN_UNITS, TOO_FEW, Subgroups
from orchestrator.data.subgroups import AGE_BANDS

FLAG = "FLAG: below overall"
UNDEFINED = "undefined (a class absent)"  # e.g. sensitivity where no case is positive


def wide_table(sg: Subgroups, name: str) -> pd.DataFrame:
    """One row per value of one subgroup: n, groups, each figure with its interval, the flag;
    values too few to measure last, said so."""
    rows = []
    for value, found in sg.measured(name).groupby("value", sort=False):
        row = {"value": value, "n": int(found["n"].iat[0]), "groups": int(found["groups"].iat[0])}
        for r in found.itertuples():
            row[r.metric] = (format_interval(r.point, r.low, r.high, note=r.note)
                             if np.isfinite(r.point) else UNDEFINED)
        flagged = found[found["flagged"].astype(bool)]["metric"].tolist()
        row["flag"] = f"{FLAG} ({', '.join(flagged)})" if flagged else ""
        rows.append(row)
    for r in sg.too_few(name).itertuples():
        rows.append({"value": r.value, "n": int(r.n), "groups": int(r.groups),
                     **{m: "" for m in sg.metrics}, "flag": TOO_FEW})
    return pd.DataFrame(rows, columns=["value", "n", "groups", *sg.metrics, "flag"])


def overall_row(sg: Subgroups) -> str:
    return ", ".join(f"{m} {v:.3f}" for m, v in sg.overall.items())


def subgroup_section(sg: Subgroups, what: str = "test split",
                     source: str = "read from the data (recorded with the split)") -> Section:
    """The report's subgroup section: what is measured, the rules, one table per subgroup.
    `source`: where the values came from, as a phrase."""
    bands = ", ".join(label for _, label in AGE_BANDS)
    flagged = sg.flagged
    verdict = ("No subgroup's interval lies wholly below the overall figure." if flagged.empty
               else f"{flagged[['subgroup', 'value']].drop_duplicates().shape[0]} subgroup "
                    "value(s) FLAGGED: " + "; ".join(
                        f"{r.subgroup} = {r.value}: {r.metric} "
                        f"{format_interval(r.point, r.low, r.high)} below overall "
                        f"{r.overall:.3f}" for r in flagged.itertuples()) + ".")
    return Section("Subgroups", [
        f"The {what} measured per value of {', '.join(sg.names)}: the values are {source} and "
        "nothing was chosen on them; every figure is at the served decisions. Overall: "
        f"{overall_row(sg)}.",
        f"A value with fewer than {MIN_CASES} cases or {MIN_UNITS} groups is listed as too "
        f"few to measure. Intervals: 95% bootstrap, {sg.resamples} resamples of the value's own "
        f"whole groups, stratified by class; under {MIN_GROUPS} groups the point is shown "
        "without one. A value is FLAGGED when an interval lies wholly below the overall "
        "figure (for a figure where lower is better, above it). A figure that needs a class "
        "absent from the value's cases (sensitivity without a positive case) reads "
        "undefined. Ages are banded: "
        f"{bands} years.",
        verdict], tables=[wide_table(sg, name).assign(subgroup=name)[
            ["subgroup", "value", "n", "groups", *sg.metrics, "flag"]] for name in sg.names])


def subgroup_line(sg: Subgroups | None) -> str:
    """One console line: the values measured per subgroup, those too few, those flagged."""
    if sg is None or not sg.names:
        return ""
    parts = []
    for name in sg.names:
        measured = sg.measured(name)["value"].nunique()
        few = len(sg.too_few(name))
        parts.append(f"{name} {measured} value(s) measured" + (f", {few} too few" if few else ""))
    flagged = sg.flagged
    flags = ("; FLAGGED: " + "; ".join(
        f"{r.subgroup} = {r.value} {r.metric} {format_interval(r.point, r.low, r.high)} < "
        f"overall {r.overall:.3f}" for r in flagged.itertuples()) if not flagged.empty
        else "; none below overall")
    return "subgroups: " + ", ".join(parts) + flags
