"""External validation of a registered version: read a site's data whole, run the registered
pyfunc on it (the served code path, `orchestrator.predict`), measure with group-bootstrap
intervals, compare with the version's internal test figures, log an evaluation run and write
the result back on the version. Optionally recalibrate on a group-disjoint part of the site."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator.clinical import external as ext
from orchestrator.clinical.bootstrap import (DEFAULT_RESAMPLES, bootstrap_intervals,
                                             count_units, figure_text, resample_indices,
                                             row_note)
from orchestrator.clinical.external_sections import Evaluation, Recalibrated, write
from orchestrator.clinical.resampled_metrics import fast_metrics
from orchestrator.clinical.subgroup_sections import subgroup_line
from orchestrator.clinical.subgroups import (Subgroups, decision_metrics, measure_subgroups,
                                             worse_when_higher)
from orchestrator.clinical.transport import Transport, compare
from orchestrator.evaluate.record import REPORT, ExternalResult, record
from orchestrator.errors import ConfigError
from orchestrator.serving import contract

Log = Callable[[str], None]
SUBGROUP_CSV = "external_metrics_by_subgroup.csv"
def _served_head(spec: contract.ServingSpec) -> contract.HeadSpec:
    (head, *more) = spec.answered_heads
    if more or not head.is_classification:
        raise ConfigError("external evaluation covers single-label classification models; "
                          "this one answers the heads "
                          f"{', '.join(h.name for h in spec.answered_heads)}")
    return head


def _task(name: str | None, spec: dict):
    """The task the model records (or the one asked), reading files as the model does."""
    from tasks import get_task

    task = get_task(name or spec["task"])
    reading = spec.get("preprocessing", {})
    return task.with_dicom(reading.get("dicom_window", "file"),
                           int(reading.get("dicom_frame", -1)))


def _predict(uri: str, model_uri: str, data, log: Log) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The registered pyfunc over every usable image; rows in the table's order, with label
    and group (images refused at the model's door are dropped, and said)."""
    from orchestrator import console
    from orchestrator.predict import predict_files
    from orchestrator.tracking import ensemble_model

    console.import_tensorflow()
    model = ensemble_model.load(model_uri, uri)
    paths = data.table["path"].tolist()
    rows, skipped = predict_files(model, paths, data.root,
                                  progress=console.Progress(len(paths), "predicting", "images",
                                                            "img/s"))
    if len(skipped):
        log(f"{len(skipped)} image(s) refused by the model's input limits, left out: "
            f"{', '.join(skipped['path'][:5])}")
    shown = [Path(os.path.relpath(p, data.root)).as_posix() for p in paths]
    table = data.table.assign(path=shown)
    return table.merge(rows, on="path", how="inner"), skipped


def _measure(cases: ext.Cases, groups: np.ndarray, resamples) -> pd.DataFrame:
    return bootstrap_intervals(lambda idx: ext.served_figures(cases, idx), len(cases),
                               resamples, units=count_units(cases.y, groups),
                               weighted=lambda counts: ext.task_figures(cases, counts))


def _transport(uri, ref, task, head, cases, groups, resamples_n, seed) -> Transport | None:
    from orchestrator.ensemble.artifacts import TEST_PREDICTIONS
    from orchestrator.tracking.evaluation import internal_answers

    answers = internal_answers(uri, ref, TEST_PREDICTIONS)
    if answers is None:
        return None
    classes = list(head.classes)
    y_int = np.array([classes.index(c) for c in answers["label"]], dtype=np.int64)
    internal = ext.cases_from_answer(answers, y_int, classes, head.positive_class)
    g_int = answers["group"].to_numpy()
    metric = task.metric
    return compare(metric, task.mode, lambda idx: ext.figures(cases, idx)[metric], len(cases),
                   resample_indices(cases.y, groups, resamples_n, seed),
                   count_units(cases.y, groups),
                   lambda idx: ext.figures(internal, idx)[metric], len(internal),
                   resample_indices(y_int, g_int, resamples_n, seed + 1),
                   count_units(y_int, g_int))


def _rules(head: contract.HeadSpec, spec: contract.ServingSpec, intervals: pd.DataFrame
           ) -> list[str]:
    """Each served rule's promise against what it did here."""
    row = intervals.set_index("metric")

    def shown(m: str) -> str:
        r = row.loc[m]
        return figure_text(m, r.point, r.low, r.high, note=row_note(r), cases="external")

    lines = [f"refer rule (confidence < {head.refer_cut:.4f}): {shown('refer_coverage')} of "
             f"cases accepted here (held-out {head.held_out_coverage:.3f}); their accuracy "
             f"{shown('accuracy_accepted')} (target {head.target_accuracy})"
             if head.refer_cut <= 1.0 else
             "refer rule: every case is referred (no cut reached the target on held-out data)"]
    if "set_coverage" in row.index:
        lines.append(f"prediction sets: coverage {shown('set_coverage')} here (stated "
                     f"{head.sets.coverage:.0%}), mean size {shown('set_size_mean')}")
    if "ood_flagged" in row.index:
        lines.append(f"out-of-distribution flag: {shown('ood_flagged')} of images flagged here "
                     f"(fitted at a {spec.ood.false_alarm:g} false-alarm rate on "
                     f"{spec.ood.scored_on} images)")
    return lines


def _recalibrate(rows, cases, head, spec, groups, fraction, seed, resamples_n, out: Path):
    """A new temperature on `fraction` of the groups; the other groups judged before and
    after it, on the same resamples."""
    from orchestrator.clinical import plots
    from orchestrator.clinical.calibration import fit_temperature

    fit, judge = ext.split_groups(groups, fraction, seed)
    temperature = fit_temperature(cases.y[fit], cases.probs[fit])
    served = rows[judge].reset_index(drop=True)
    # the served rules unchanged, on probabilities scaled once more (OOD: the flag as served)
    again = contract.answer(cases.probs[judge],
                            dataclasses.replace(spec, temperature=temperature, ood=None))
    if "out_of_distribution" in served:
        flagged = served["out_of_distribution"].to_numpy(bool)
        again = again.assign(out_of_distribution=flagged,
                             refer=again["refer"].to_numpy(bool) | flagged)
    y, g = cases.y[judge], groups[judge]
    before = ext.cases_from_answer(served, y, head.classes, head.positive_class)
    after = ext.cases_from_answer(again, y, head.classes, head.positive_class)
    resamples = resample_indices(y, g, resamples_n, seed + 2)
    figure = plots.reliability_diagram(y, before.probs, after.probs,
                                       out / "reliability_recalibrated.png",
                                       temperature=temperature, before_name="as served",
                                       title="evaluated part:")
    split = rows[["path", "group"]].assign(part=np.where(fit, "fit", "evaluated"))
    return Recalibrated(temperature, len(np.unique(groups[fit])), int(fit.sum()),
                        len(np.unique(g)), int(judge.sum()), _measure(before, g, resamples),
                        _measure(after, g, resamples), figure), split


def evaluate_external(model_uri: str, data_path: str, *, task: str | None = None,
                      site: str | None = None, tracking_uri: str | None = None,
                      recalibrate: float | None = None, seed: int = 0,
                      resamples: int = DEFAULT_RESAMPLES, subgroups: Sequence[str] = (),
                      log: Log = print) -> ExternalResult:
    """Everything `python -m orchestrator.evaluate` does; returns what it logged."""
    from orchestrator import tracking
    from orchestrator.data import subgroups as sg
    from orchestrator.data.external import read_external
    from orchestrator.tracking.evaluation import read_spec, resolve_version

    site = site_name(site or Path(data_path).resolve().name)
    if recalibrate is not None and not 0.0 < recalibrate < 1.0:
        raise ConfigError(f"--recalibrate takes a fraction of the groups in (0, 1), got "
                          f"{recalibrate}")
    uri = tracking_uri or tracking.default_tracking_uri()
    ref = resolve_version(uri, model_uri)
    spec_file = read_spec(uri, ref)
    spec = contract.ServingSpec.from_dict(spec_file["serving"])
    head = _served_head(spec)
    the_task = _task(task, spec_file)
    log(f"{ref.uri} ({model_uri}), task {the_task.key}; external data {data_path} as site "
        f"{site}")
    names = (sg.check_columns(subgroups, sg.layout_columns(the_task, data_path), data_path)
             if subgroups else ())
    data = read_external(the_task, data_path, head.classes, log=log)
    rows, _ = _predict(uri, ref.uri, data, log)
    if not len(rows):
        raise ConfigError(f"no image of {data_path} passed the model's input limits")
    groups = rows["group"].to_numpy()
    y = np.array([head.classes.index(c) for c in rows["label"]], dtype=np.int64)
    cases = ext.cases_from_answer(rows, y, head.classes, head.positive_class)
    log(f"{len(rows)} image(s) of {count_units(y, groups)} group(s) predicted; "
        f"{data.left_out} unreadable left out")
    intervals = _measure(cases, groups, resample_indices(y, groups, resamples, seed))
    transport = _transport(uri, ref, the_task, head, cases, groups, resamples, seed)
    by_subgroup = (_subgroups(the_task, data, data_path, rows, names, cases, groups, resamples,
                              seed) if names else None)
    if by_subgroup is not None:
        log(subgroup_line(by_subgroup))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        from orchestrator.clinical import plots

        reliability = plots.reliability_diagram(y, cases.probs, None,
                                                 out / "reliability_diagram.png",
                                                 temperature=None, before_name="as served",
                                                 title=f"{site}:")
        recal = split = None
        if recalibrate is not None:
            recal, split = _recalibrate(rows, cases, head, spec, groups, recalibrate, seed,
                                        resamples, out)
        event = ("the positive class's probability" if head.positive_class is not None else
                 "the top-label confidence against whether the decision was right")
        evaluation = Evaluation(
            model=ref.uri, site=site, source=str(data_path),
            facts={"images evaluated": len(rows), "groups": count_units(y, groups),
                   "unreadable, left out": data.left_out,
                   "duplicate pairs (one group each)": data.duplicate_pairs,
                   "data fingerprint": data.fingerprint, "task": the_task.key},
            intervals=intervals, transport=transport, calibration_target=f"Read on {event}.",
            rules=_rules(head, spec, intervals), reliability=reliability,
            synthetic=data.synthetic or ref.tags.get("synthetic_data") == "true",
            recalibrated=recal, subgroups=by_subgroup)
        files = [write(evaluation, out / REPORT), reliability]
        if by_subgroup is not None:
            files.append(out / SUBGROUP_CSV)
            by_subgroup.table.to_csv(files[-1], index=False)
        if recal is not None:
            files += [recal.figure]
        result = record(uri, ref, evaluation, rows, split, files, the_task, resamples, seed,
                        recalibrate, log)
    return result


def _subgroups(task, data, data_path: str, rows: pd.DataFrame, names, cases: ext.Cases,
               groups: np.ndarray, resamples_n: int, seed: int) -> Subgroups:
    """The site's figures per subgroup value: the task metric and the decision figures at the
    served decisions (calibration is left to the whole site: it needs more cases)."""
    from orchestrator.data.subgroups import read_values

    read = read_values(task, data_path, data.table["path"].tolist(), names)
    shown = [Path(os.path.relpath(p, data.root)).as_posix() for p in data.table["path"]]
    values = {n: rows["path"].map(dict(zip(shown, v))).fillna("unknown").to_numpy(dtype=object)
              for n, v in read.items()}

    def figures(idx: np.ndarray) -> dict[str, float]:
        out = fast_metrics(cases.y[idx], cases.probs[idx], cases.positive)
        out.update(ext.decision_figures(cases.y[idx], cases.decision[idx], cases.classes,
                                        cases.positive))
        return out

    return measure_subgroups(values, cases.y, groups, figures,
                             (task.metric, *decision_metrics(cases.classes, cases.positive)),
                             resamples_n, seed, worse_when_higher(task))


def site_name(text: str) -> str:
    """A site's name as it keys the version's tag `external.<site>`: letters, digits, `_`,
    `-`, `.` (anything else becomes `_`)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
    if not name:
        raise ConfigError(f"--name {text!r}: give a site name of letters, digits, _ - or .")
    return name
