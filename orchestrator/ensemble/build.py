"""Build the final ensemble of a finished sweep: score the candidates (`sources.py`) under each
TTA policy in a Ray actor pool, choose policy, members and weights on held-out predictions only
(out-of-fold under cross-validation), then predict the test split once, log it all under the
sweep's parent run and register the servable model.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator import tracking
from orchestrator.console import detail
from orchestrator.naming import ensemble_description
from orchestrator.ensemble import artifacts
from orchestrator.ensemble.recorded import recorded_data
from orchestrator.ensemble.report import EnsembleReport
from orchestrator.ensemble.sources import (HeldOut, SweepInfo, cross_validated, holdout,
                                           ranked_trials, sweep_info)
from orchestrator.errors import ConfigError
from orchestrator.keys import NOTE_TAG
from orchestrator.tta.pool import ScoringPool, pool_size

if TYPE_CHECKING:
    from orchestrator.clinical.evaluate import ClinicalOptions

DEFAULT_POLICIES = ("none", "standard6", "aggressive17")
Log = Callable[[str], None]


def build_ensemble(sweep_run_id: str, *, tracking_uri: str | None = None,
                   policies: Sequence[str] = DEFAULT_POLICIES, top_k: int = 8,
                   max_iterations: int = 25, actors: int | None = None,
                   gpus_per_actor: float = 0.0, data_dir: str | None = None,
                   clinical: "ClinicalOptions | None" = None,
                   log: Log = print) -> EnsembleReport:
    """Everything after the sweep; `tracking_uri` defaults as the sweep's does; `clinical`
    configures the report (threshold rule, resamples, MC dropout; defaults otherwise)."""
    from orchestrator.clinical.evaluate import ClinicalOptions
    from orchestrator.ensemble.choice import choose, comparison_rows
    from orchestrator.tta.policies import get_policy, policy_for_task, union_of
    from tasks import get_task

    uri = tracking_uri or tracking.default_tracking_uri()
    sweep = sweep_info(uri, sweep_run_id)
    task = get_task(sweep.task)
    for name in policies:
        get_policy(name)  # unknown policy: fail before any work
    clinical = clinical or ClinicalOptions()
    with tempfile.TemporaryDirectory(prefix="medsweep-ensemble-") as tmp:
        work = Path(tmp)
        ranked, board = ranked_trials(sweep, task)
        cv_runs = tracking.list_trial_runs(uri, sweep.experiment_id, sweep.parent_run_id,
                                           kind=tracking.KIND_CV_TRIAL)
        held = (cross_validated(sweep, task, cv_runs, work, log, data_dir) if cv_runs else
                holdout(sweep, task, ranked, top_k, work, log, data_dir))
        task = next(iter(held.data.values())).task
        # before any scoring: an unknown column fails in seconds
        subgroups = _test_subgroups(task, next(iter(held.data.values())), clinical.subgroups,
                                    data_dir, log)
        by_policy = {p: policy_for_task(p, task.tta_kinds) for p in policies}
        transforms = union_of(by_policy.values())
        models = [m for group in held.models.values() for m in group]
        log(f"scoring {len(held.models)} candidate(s) ({len(models)} model(s)) x "
            f"{len(transforms)} TTA transforms on {len(held.y)} {held.kind} images")
        with ScoringPool(pool_size(len(models), actors, 1), gpus_per_actor=gpus_per_actor,
                         log=log) as pool:
            scored = pool.score(models, held.images, transforms)
            per_transform = held.assemble(scored)
            if not per_transform:
                raise ConfigError(f"sweep {sweep_run_id}: no candidate model could be loaded")
            choice = choose(per_transform, transforms, by_policy, held.y, task,
                            max_iterations=max_iterations)
            detail(log, f"chosen on {held.kind} predictions: TTA {choice.policy}, members "
                   + ", ".join(f"{m} x{w:.2f}" for m, w in zip(choice.ensemble.members,
                                                             choice.ensemble.weights)))
            # The test split is touched here, once, after every choice above is fixed: every
            # model of every configuration the comparison needs (all K fold models under CV).
            needed = [dataclasses.replace(m, images_key=None)
                      for name in sorted(choice.test_members) for m in held.models[name]]
            test_images = {r: d.arrays("test")[0] for r, d in held.data.items()}
            y_test = next(iter(held.data.values())).labels("test")
            tested = pool.score(needed, test_images, by_policy[choice.policy])
        test_probs = {name: np.mean([tested[m.name].probs.mean(axis=0)
                                     for m in held.models[name]], axis=0)
                      for name in choice.test_members}
        table = comparison_rows(choice, held.y, test_probs, y_test, task)
        scoring = _scoring_table(models, scored, tested)
        prepared = next(iter(held.data.values()))
        rows = {"ensemble": choice.ensemble, "best_single": choice.best_single,
                "top2_soft_vote": choice.top2}
        inputs = _clinical_inputs(sweep, task, choice, rows, held, y_test, test_probs,
                                  prepared, test_images, board)
        recorded = recorded_data(sweep, task, prepared, board, choice.ensemble.members, work)
        inputs = dataclasses.replace(inputs, subgroups=subgroups, flow=recorded.flow,
                                     split_table=recorded.split_table,
                                     copies_kept_apart=sweep.keep_duplicates)
        return _record(sweep, task, choice, table, test_probs, y_test, held,
                       by_policy[choice.policy], scoring, (inputs, clinical), work, log,
                       checklist=recorded.checklist)


def _clinical_inputs(sweep: SweepInfo, task, choice, rows: dict, held: HeldOut, y_test,
                     test_probs, prepared, test_images, board: pd.DataFrame):
    from orchestrator.clinical.evaluate import ClinicalInputs, Member

    test_rows = prepared.table[prepared.table["split"] == "test"]
    ens = choice.ensemble
    first = {name: models[0] for name, models in held.models.items()}  # Grad-CAM's model
    return ClinicalInputs(
        task=task, y_val=held.y, y_test=y_test, held_out=held.kind, val_groups=held.groups,
        val_probs={k: e.predict(choice.val_probs) for k, e in rows.items()},
        test_probs={k: e.predict(test_probs) for k, e in rows.items()},
        test_groups=test_rows["group"].to_numpy(),
        test_paths=[Path(os.path.relpath(p, prepared.root)).as_posix() for p in test_rows["path"]],
        test_images=test_images,
        members=[Member(m, w, first[m].model_path, first[m].resolution)
                 for m, w in zip(ens.members, ens.weights)],
        policy=choice.policy, leaderboard=board, synthetic=sweep.synthetic,
        data_notes=sweep.data_notes,
        title=f"MedSweep clinical evaluation: {task.key}, sweep {sweep.name} "
              f"(run {sweep.parent_run_id[:8]})")


def _test_subgroups(task, prepared, asked: Sequence[str], data_dir: str | None,
                    log: Log) -> dict[str, np.ndarray]:
    """Each subgroup's test values: from the recorded manifest (every recorded one when none
    is asked); one the sweep did not record is read from the data now, and said so."""
    from orchestrator.data import subgroups as sg

    test_rows = prepared.table[prepared.table["split"] == "test"]
    have = {name.lower(): name for name in sg.recorded(prepared.table)}
    names = [have.get(a.lower(), a) for a in asked] if asked else list(have.values())
    found = {n: test_rows[sg.column(n)].to_numpy(dtype=object) for n in names
             if n.lower() in have}
    missing = [n for n in names if n.lower() not in have]
    if missing:
        source = data_dir or str(prepared.root)
        now = sg.check_columns(missing, sg.layout_columns(task, source), source)
        log(f"subgroup(s) {', '.join(now)} not recorded by the sweep: read from {source} now")
        read = sg.read_values(task, source, test_rows["path"].tolist(), now)
        found.update({n: np.asarray(v, dtype=object) for n, v in read.items()})
    return found


def with_intervals(table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """The comparison rows with `test_<metric>_ci_low/_ci_high` beside each test figure."""
    out = table.copy()
    for (model, metric), row in intervals.set_index(["model", "metric"]).iterrows():
        if f"test_{metric}" in out.columns and model in set(out["model"]):
            at = out["model"] == model
            out.loc[at, f"test_{metric}_ci_low"] = row["low"]
            out.loc[at, f"test_{metric}_ci_high"] = row["high"]
    return out


def _scoring_table(candidates, scored: dict, tested: dict) -> pd.DataFrame:
    """Where each model was read from and scored: one row per model and split."""
    rows = [{"model": c.name, "split": split, "resolution": c.resolution,
             "node": result[c.name].node, "source": result[c.name].source,
             "error": result[c.name].error}
            for split, result in (("held_out", scored), ("test", tested))
            for c in candidates if c.name in result]
    return pd.DataFrame(rows)


def _record(sweep: SweepInfo, task, choice, table: pd.DataFrame, test_probs, y_test,
            held: HeldOut, transforms, scoring: pd.DataFrame, clinical: tuple, work: Path,
            log: Log, checklist=None) -> EnsembleReport:
    """Metrics, plots and reports first, then the model, its check, its registration; the run
    is FINISHED only when all of that is in."""
    from orchestrator.ensemble.report import write_reports
    from orchestrator.clinical.evaluate import evaluate
    from orchestrator.ensemble.publish import publish

    ens = choice.ensemble
    # `member_weights`: `weights` means a backbone's pretrained weights in every trial run
    params = {"members": list(ens.members), "member_weights": list(ens.weights),
              "tta_policy": choice.policy, "method": ens.method, "task": task.key,
              "candidates": len(held.models), "chosen_on": held.kind,
              "models_per_member": len(next(iter(held.models.values())))}
    run_id = tracking.start_child_run(sweep.uri, sweep.experiment_id, sweep.parent_run_id,
                                      run_name="ensemble", kind=tracking.KIND_ENSEMBLE,
                                      params=params, tags={tracking.TAG_TASK: task.key})
    try:
        row = table.set_index("model").loc["ensemble"]
        tracking.log_metrics(sweep.uri, run_id, {k: v for k, v in row.items()
                                                  if isinstance(v, (int, float))})
        tracking.log_table_artifact(sweep.uri, run_id, scoring, artifacts.SCORING)
        probs = ens.predict(test_probs)
        ood_fit = _ood_fit(held, ens, clinical, log)
        ood_seen = ood_fit.evaluated()  # the cut and the test images it flags, once
        inputs, options = clinical
        result = evaluate(dataclasses.replace(inputs, ood=ood_seen), options,
                          work / "clinical", log=log)
        tracking.log_metrics(sweep.uri, run_id, {k: v for k, v in result.metrics.items()
                                                  if k not in row.index})  # no duplicates
        if result.interval_notes:  # why the UI shows these test figures with no interval
            tracking.set_tags(sweep.uri, run_id,
                              {tracking.TAG_INTERVAL_NOTE: "; ".join(result.interval_notes)})
        for path in result.files:
            tracking.log_file(sweep.uri, run_id, path)
        table = with_intervals(table, result.intervals)
        for path in write_reports(table, y_test, probs, task, choice, work / "reports"):
            tracking.log_file(sweep.uri, run_id, path)
        # A member is its configuration's models averaged: K fold models under CV, one else.
        parts = [(model, w / len(held.models[m])) for m, w in zip(ens.members, ens.weights)
                 for model in held.models[m]]
        spec = {"task": task.key, "classes": list(task.classes),
                "preprocessing": dataclasses.asdict(task.preprocessing),
                "transforms": [dataclasses.asdict(t) for t in transforms],
                "members": [{"name": model.name, "weight": w, "resolution": model.resolution}
                            for model, w in parts]}
        prepared = next(iter(held.data.values()))
        model_uri, name, version = publish(
            sweep, task, spec, parts, work, result, prepared, y_test, probs,
            dict(held=held, choice=choice, transforms=transforms, table=table,
                 intervals=result.intervals, checklist=checklist), run_id, log,
            ood_fit=ood_fit)
        tracking.set_tags(sweep.uri, run_id, {NOTE_TAG: ensemble_description(
            ens.members, ens.weights, choice.policy, held.kind,
            _test_figure(result.intervals, task.metric), (name, version))})
    except Exception:
        tracking.finish_run(sweep.uri, run_id, "FAILED")
        raise
    tracking.finish_run(sweep.uri, run_id, "FINISHED")
    detail(log, f"ensemble run {run_id}; model registered as {name}@candidate (version "
                f"{version}), its card on the model-version page")
    # A multi-head ensemble has a temperature and a refer cut per head (its run's metrics
    # `<head>_temperature`, `<head>_refer_cut`, and the served spec), none of its own.
    return EnsembleReport(run_id=run_id, task=task.key, policy=choice.policy,
                          members=ens.members, weights=ens.weights, table=table,
                          model_uri=model_uri, registered=f"{name}@candidate (version {version})",
                          tracking_uri=sweep.uri, intervals=result.intervals,
                          temperature=result.answer.temperature if result.answer
                          else None,
                          threshold=result.operating_point.threshold
                          if result.operating_point else None, chosen_on=held.kind,
                          held_out_images=len(held.y),
                          referral=result.referral,
                          registered_name=name, registered_version=version,
                          head_fits=tuple(result.heads.values()),
                          ood=ood_fit.spec, ood_test_flagged=ood_seen.test_share,
                          sets=tuple((name if fit is not result.answer else "", fit.sets)
                                     for name, fit in result.fits.items()
                                     if fit.sets is not None),
                          patient_line=result.patient_line,
                          subgroup_line=result.subgroup_line)


def _test_figure(intervals: pd.DataFrame, metric: str) -> str:
    """`accuracy 0.778 [0.651, 0.872]`: the ensemble's test figure as the run page says it."""
    from orchestrator.clinical.bootstrap import figure_text, row_note

    found = intervals[(intervals.model == "ensemble") & (intervals.metric == metric)]
    if not len(found):
        return f"{metric} not measured"
    row = found.iloc[0]
    return f"{metric} {figure_text(metric, row.point, row.low, row.high, note=row_note(row))}"


def _ood_fit(held: HeldOut, ens, clinical: tuple, log: Log):
    """The OOD flag's statistics and cut (`ood_fit`), at the clinical options' rate."""
    from orchestrator.ensemble.ood_fit import fit_ood

    inputs, options = clinical
    fit = fit_ood(held, ens.members, ens.weights, inputs.test_images, options.ood_false_alarm,
                  log=log)
    detail(log, f"OOD cut (Mahalanobis distance of `{fit.spec.layer}` features, fitted on "
                f"{fit.spec.held_out_cases} {held.kind} images at a {fit.spec.false_alarm:g} "
                f"false-alarm rate): {fit.spec.cut:.3f}")
    return fit
