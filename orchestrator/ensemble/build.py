"""Build the final ensemble of a finished sweep: score the top trials under each TTA policy in a
Ray actor pool, choose policy, members and weights on validation only, then predict the test
split once, log it all under the sweep's parent run and register the servable model.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator import tracking
from orchestrator.errors import ConfigError
from orchestrator.train.artifacts import BEST_MODEL, VAL_LABELS
from orchestrator.tta.pool import Candidate, ScoringPool, pool_size

DEFAULT_POLICIES = ("none", "standard6", "aggressive17")
Log = Callable[[str], None]


@dataclass
class EnsembleReport:
    run_id: str
    task: str
    policy: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    table: pd.DataFrame  # rows: ensemble / best single / top-2; columns: val_* and test_*
    model_uri: str
    registered: str  # "name@alias (version N)"
    tracking_uri: str
    intervals: pd.DataFrame | None = None  # test metrics with 95% bootstrap intervals
    temperature: float | None = None
    threshold: float | None = None  # binary tasks: the operating point chosen on validation
    chosen_on: str = "validation"  # or "out-of-fold": what every choice above was made on


@dataclass(frozen=True)
class SweepInfo:
    uri: str
    parent_run_id: str
    experiment_id: str
    task: str
    data_notes: tuple[str, ...] = ()
    synthetic: bool = False


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
    sweep = _sweep_info(uri, sweep_run_id)
    task = get_task(sweep.task)
    for name in policies:
        get_policy(name)  # unknown policy: fail before any work
    clinical = clinical or ClinicalOptions()
    with tempfile.TemporaryDirectory(prefix="medsweep-ensemble-") as tmp:
        work = Path(tmp)
        ranked, board = _ranked_trials(sweep, task)
        cv_runs = tracking.list_trial_runs(uri, sweep.experiment_id, sweep.parent_run_id,
                                           kind=tracking.KIND_CV_TRIAL)
        held = (_cross_validated(sweep, task, cv_runs, work, log, data_dir) if cv_runs else
                _holdout(sweep, task, ranked, top_k, work, log, data_dir))
        task = next(iter(held.data.values())).task
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
            log(f"chosen on {held.kind} predictions: TTA {choice.policy}, members "
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
        return _record(sweep, task, choice, table, test_probs, y_test, held,
                       by_policy[choice.policy], scoring, (inputs, clinical), work, log)


@dataclass
class HeldOut:
    """What every choice is made on: each configuration's models and the held-out images they
    predict. Holdout: one model per trial, the validation split. Cross-validation: one model per
    fold, each predicting its own fold, which together give every non-test image exactly one
    out-of-fold prediction per configuration."""

    kind: str  # "validation" | "out-of-fold"
    models: dict[str, list[Candidate]]  # configuration -> its models
    images: dict[object, np.ndarray]  # Candidate.images -> the images it predicts
    positions: dict[str, np.ndarray]  # model name -> rows of `y` its predictions fill
    y: np.ndarray
    data: dict[int, object]  # resolution -> PreparedData (the recorded split)

    def assemble(self, scored: dict) -> dict[str, np.ndarray]:
        """(T, N, C) per configuration whose every model could be scored; others are left out
        (a configuration missing a fold has no prediction for that fold's images)."""
        out = {}
        for name, models in self.models.items():
            results = [scored[m.name].probs for m in models]
            if any(r is None for r in results):
                continue
            full = np.full((results[0].shape[0], len(self.y), results[0].shape[2]), np.nan,
                           dtype=np.float32)
            for model, probs in zip(models, results):
                full[:, self.positions[model.name]] = probs
            out[name] = full
        return out


def _clinical_inputs(sweep: SweepInfo, task, choice, rows: dict, held: HeldOut, y_test,
                     test_probs, prepared, test_images, board: pd.DataFrame):
    from orchestrator.clinical.evaluate import ClinicalInputs, Member

    test_rows = prepared.table[prepared.table["split"] == "test"]
    ens = choice.ensemble
    first = {name: models[0] for name, models in held.models.items()}  # Grad-CAM's model
    return ClinicalInputs(
        task=task, y_val=held.y, y_test=y_test, held_out=held.kind,
        val_probs={k: e.predict(choice.val_probs) for k, e in rows.items()},
        test_probs={k: e.predict(test_probs) for k, e in rows.items()},
        test_groups=test_rows["group"].to_numpy(), test_paths=test_rows["path"].tolist(),
        test_images=test_images,
        members=[Member(m, w, first[m].model_path, first[m].resolution)
                 for m, w in zip(ens.members, ens.weights)],
        policy=choice.policy, leaderboard=board, synthetic=sweep.synthetic,
        data_notes=sweep.data_notes,
        title=f"MedSweep clinical evaluation: {task.key}, sweep {sweep.parent_run_id}")


def _ranked_trials(sweep: SweepInfo, task) -> tuple[list, pd.DataFrame]:
    """Every trial run of the sweep, best validation metric first, and the same as a table
    for the report (each run's metric history read once)."""
    key = f"val_{task.metric}"
    runs = tracking.list_trial_runs(sweep.uri, sweep.experiment_id, sweep.parent_run_id)
    best = {r.info.run_id: tracking.best_metric(sweep.uri, r.info.run_id, key, task.mode)
            for r in runs}
    nan_last = float("-inf") if task.mode == "max" else float("inf")
    runs.sort(key=lambda r: nan_last if np.isnan(best[r.info.run_id]) else best[r.info.run_id],
              reverse=task.mode == "max")
    rows = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        trial = tags.get(tracking.TAG_TRIAL_ID, run.info.run_id)
        rows.append({"trial": trial, f"best_{key}": best[run.info.run_id],
                     "status": tags.get(tracking.TAG_STATUS, ""),
                     "epochs": tags.get(tracking.TAG_EPOCHS_RUN, ""),
                     **{k: params.get(k, "") for k in ("backbone", "resolution", "schedule",
                                                        "lr_multiplier", "loss", "augment")},
                     "label": f"{trial} {params.get('backbone', '')} "
                              f"{params.get('resolution', '')}px"})
    return runs, pd.DataFrame(rows)


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


def _sweep_info(uri: str, run_id: str) -> SweepInfo:
    run = tracking.get_run(uri, run_id)
    if run.data.tags.get(tracking.TAG_KIND) != tracking.KIND_SWEEP:
        raise ConfigError(f"MLflow run {run_id} is not a MedSweep sweep run")
    params = run.data.params
    return SweepInfo(uri=uri, parent_run_id=run_id, experiment_id=run.info.experiment_id,
                     task=params["task"],
                     synthetic=run.data.tags.get(tracking.TAG_SYNTHETIC, "true") != "false",
                     data_notes=_data_notes(params))


def _manifest(sweep: SweepInfo, work: Path) -> Path:
    """The sweep's recorded manifest (csv + json), downloaded from its parent run once."""
    from orchestrator.data.splits import MANIFEST_CSV, MANIFEST_JSON

    folder = work / "recorded-data"
    if not (folder / MANIFEST_JSON).is_file():
        try:
            for name in (MANIFEST_CSV, MANIFEST_JSON):
                tracking.download(sweep.uri, sweep.parent_run_id, name, folder)
        except Exception as err:  # an older sweep, or its artifacts gone
            raise ConfigError(f"sweep {sweep.parent_run_id} has no recorded manifest "
                              f"({MANIFEST_CSV} and {MANIFEST_JSON}) to rebuild its split from: "
                              f"{err}") from None
    return folder / MANIFEST_CSV


def _data_notes(params: dict) -> tuple[str, ...]:
    """The sweep's data facts (parent-run params) as sentences for the report."""
    if "images" not in params:
        return ()
    grouping = ("copies were kept apart (--keep-duplicates): test figures can be inflated"
                if params.get("keep_duplicates") == "True" else
                "copies share a group, so no split separates them")
    return (f"{params['images']} images used; {params.get('images_unreadable', 0)} missing or "
            "unreadable file(s) were left out before splitting (unreadable.csv in the sweep run).",
            f"{params.get('duplicate_pairs', 0)} duplicate image pair(s) (exact or near copies) "
            f"were found before splitting; {grouping}; "
            f"{params.get('duplicates_left_out', 0)} copy(ies) left out because a copy sits in a "
            "held-out split (duplicates.csv, duplicates_left_out.csv).")


def _holdout(sweep: SweepInfo, task, ranked: list, top_k: int, work: Path, log: Log,
             data_dir: str | None) -> HeldOut:
    """The top-k finished trials of `ranked` (best first), their models downloaded and their
    saved validation labels checked against the data as the sweep recorded it (its manifest:
    never split again; every file must still hold the recorded bytes)."""
    from orchestrator.data.dataset import load_recorded

    finished = [r for r in ranked
                if r.data.tags.get(tracking.TAG_STATUS) in (tracking.STATUS_COMPLETED,
                                                             tracking.STATUS_STOPPED_EARLY)]
    if not finished:
        raise ConfigError(f"sweep {sweep.parent_run_id} has no finished trials to ensemble")
    data, models = {}, {}
    for run in finished:
        if len(models) >= top_k:
            break
        name = run.data.tags[tracking.TAG_TRIAL_ID]
        resolution = int(run.data.params["resolution"])
        if resolution not in data:
            data[resolution] = load_recorded(task, _manifest(sweep, work), resolution,
                                             data_dir=data_dir, log=log)
        model = _download_model(sweep, run, name, resolution, work, log,
                                data[resolution].labels("val"))
        if model is not None:
            models[name] = [model]
    if not models:
        raise ConfigError(f"sweep {sweep.parent_run_id}: no finished trial has a usable model")
    first = next(iter(data.values()))
    y = first.labels("val")
    return HeldOut(kind="validation", models=models,
                   images={r: d.arrays("val")[0] for r, d in data.items()},
                   positions={m[0].name: np.arange(len(y)) for m in models.values()}, y=y,
                   data=data)


def _cross_validated(sweep: SweepInfo, task, runs: list, work: Path, log: Log,
                     data_dir: str | None) -> HeldOut:
    """Every finalist of the cross-validation stage with its K fold models; each fold model
    predicts the fold it never saw (checked: its saved labels are that fold's)."""
    from orchestrator.data.dataset import load_recorded

    by_finalist: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get(tracking.TAG_STATUS) == tracking.STATUS_COMPLETED:
            by_finalist.setdefault(run.data.tags[tracking.TAG_FINALIST], []).append(run)
    data, models, images, positions = {}, {}, {}, {}
    for finalist, fold_runs in sorted(by_finalist.items()):
        resolution = int(fold_runs[0].data.params["resolution"])
        if resolution not in data:
            data[resolution] = load_recorded(task, _manifest(sweep, work), resolution,
                                             data_dir=data_dir, log=log)
        prepared = data[resolution]
        pool = prepared.table[prepared.table["split"] != "test"].reset_index(drop=True)
        folds = prepared.folds
        group = []
        for run in sorted(fold_runs, key=lambda r: int(r.data.tags[tracking.TAG_FOLD])):
            fold = int(run.data.tags[tracking.TAG_FOLD])
            rows = np.flatnonzero(pool["fold"].to_numpy() == str(fold))
            key = (resolution, fold)
            if key not in images:
                images[key], _ = prepared.rows_arrays(pool.iloc[rows])
            y_fold = np.array([prepared.task.class_index(c) for c in pool["label"].iloc[rows]])
            model = _download_model(sweep, run, f"{finalist}-f{fold}", resolution, work, log,
                                    y_fold, images_key=key)
            if model is not None:
                group.append(model)
                positions[model.name] = rows
        if len(group) == folds:
            models[finalist] = group
        else:
            log(f"skipping finalist {finalist}: {len(group)} of {folds} fold models usable")
    if not models:
        raise ConfigError(f"sweep {sweep.parent_run_id}: no finalist has all its fold models")
    first = next(iter(data.values()))
    pool = first.table[first.table["split"] != "test"]
    y = np.array([first.task.class_index(c) for c in pool["label"]], dtype=np.int64)
    return HeldOut(kind="out-of-fold", models=models, images=images, positions=positions, y=y,
                   data=data)


def _download_model(sweep: SweepInfo, run, name: str, resolution: int, work: Path, log: Log,
                    expected_labels: np.ndarray, images_key: object = None) -> Candidate | None:
    """A run's best model as a candidate, or None (named in the log) when its files are gone
    or its saved held-out labels are not the ones the recorded split gives it."""
    try:
        folder = tracking.download(sweep.uri, run.info.run_id, "", work / name)
    except Exception as err:  # artifacts gone: named and skipped, the rest go on
        log(f"skipping {name}: artifacts unavailable ({err})")
        return None
    labels = folder / VAL_LABELS
    if not (folder / BEST_MODEL).exists() or not labels.exists():
        log(f"skipping {name}: no {BEST_MODEL} / {VAL_LABELS} logged")
        return None
    if not np.array_equal(np.load(labels), expected_labels):
        log(f"skipping {name}: its held-out labels differ from the recorded split")
        return None
    return Candidate(name, str(folder / BEST_MODEL), resolution,
                     checkpoint=run.data.tags.get(tracking.TAG_CHECKPOINT),
                     images_key=images_key)

def _record(sweep: SweepInfo, task, choice, table: pd.DataFrame, test_probs, y_test,
            held: HeldOut, transforms, scoring: pd.DataFrame, clinical: tuple, work: Path,
            log: Log) -> EnsembleReport:
    """Metrics, plots and reports first, then the model, its check, its registration; the run
    is FINISHED only when all of that is in."""
    from orchestrator.ensemble.report import write_reports
    from orchestrator.clinical.evaluate import evaluate
    from orchestrator.tracking import ensemble_model

    ens = choice.ensemble
    params = {"members": list(ens.members), "weights": [round(w, 6) for w in ens.weights],
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
        tracking.log_table_artifact(sweep.uri, run_id, scoring, "scoring.csv")
        probs = ens.predict(test_probs)
        result = evaluate(*clinical, work / "clinical", log=log)
        tracking.log_metrics(sweep.uri, run_id, {k: v for k, v in result.metrics.items()
                                                  if k not in row.index})  # no duplicates
        for path in result.files:
            tracking.log_file(sweep.uri, run_id, path)
        table = with_intervals(table, result.intervals)
        for path in write_reports(table, y_test, probs, task, choice, work / "reports"):
            tracking.log_file(sweep.uri, run_id, path)
        # A member is its configuration's models averaged: K fold models under CV, one else.
        parts = [(model, w / len(held.models[m])) for m, w in zip(ens.members, ens.weights)
                 for model in held.models[m]]
        members = {model.name: ensemble_model.copy_member(Path(model.model_path),
                                                          work / "members", model.name)
                   for model, _ in parts}
        spec = {"task": task.key, "classes": list(task.classes),
                "preprocessing": dataclasses.asdict(task.preprocessing),
                "transforms": [dataclasses.asdict(t) for t in transforms],
                "members": [{"name": model.name, "weight": w, "resolution": model.resolution}
                            for model, w in parts]}
        model_uri = ensemble_model.log_ensemble_model(sweep.uri, run_id, spec, members, work)
        name = f"medsweep-{task.name}"
        version = ensemble_model.register(sweep.uri, model_uri, name, "candidate")
    except Exception:
        tracking.finish_run(sweep.uri, run_id, "FAILED")
        raise
    tracking.finish_run(sweep.uri, run_id, "FINISHED")
    log(f"ensemble run {run_id}; model registered as {name}@candidate (version {version})")
    return EnsembleReport(run_id=run_id, task=task.key, policy=choice.policy,
                          members=ens.members, weights=ens.weights, table=table,
                          model_uri=model_uri, registered=f"{name}@candidate (version {version})",
                          tracking_uri=sweep.uri, intervals=result.intervals,
                          temperature=result.temperature,
                          threshold=result.operating_point.threshold
                          if result.operating_point else None, chosen_on=held.kind)


def print_report(report: EnsembleReport) -> None:
    """Validation and test side by side: the choice was made on the first, judged on the second
    (test figures with their 95% bootstrap intervals)."""
    import pandas as pd

    from orchestrator.clinical.bootstrap import format_interval

    def test_value(model: str, metric: str, point: float) -> str:
        if report.intervals is None:
            return f"{point:.3f}"
        found = report.intervals[(report.intervals.model == model)
                                 & (report.intervals.metric == metric)]
        if found.empty:
            return f"{point:.3f}"
        return format_interval(point, found.low.iloc[0], found.high.iloc[0])

    print("\n" + "=" * 78)
    print(f"final ensemble for {report.task}: TTA {report.policy}; members "
          + ", ".join(f"{m} ({w:.2f})" for m, w in zip(report.members, report.weights)))
    metrics = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc"]
    rows = []
    for _, row in report.table.iterrows():
        for m in metrics:
            rows.append({"model": row["model"], "metric": m,
                         report.chosen_on: f"{row[f'val_{m}']:.3f}",
                         "test [95% CI]": test_value(row["model"], m, row[f"test_{m}"])})
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).to_string(index=False))
    if report.intervals is not None:
        ens = report.intervals[report.intervals.model == "ensemble"].set_index("metric")
        extra = [m for m in ("sensitivity_at_threshold", "specificity_at_threshold",
                             "ppv_at_threshold", "npv_at_threshold", "brier", "brier_calibrated",
                             "ece", "ece_calibrated") if m in ens.index]
        if report.threshold is not None:
            print(f"operating point (chosen on {report.chosen_on} predictions): threshold "
                  f"{report.threshold:.4f}")
        if report.temperature is not None:
            print(f"temperature (fitted on {report.chosen_on} predictions): "
                  f"{report.temperature:.3f}")
        for m in extra:
            print(f"  ensemble test {m}: {format_interval(*ens.loc[m, ['point', 'low', 'high']])}")
    print(f"ensemble run {report.run_id}; model {report.registered}; report.html in its "
          "artifacts")
    print(f"serve it: MLFLOW_TRACKING_URI={report.tracking_uri} mlflow models serve "
          f"-m models:/{report.registered.split(' ')[0]} --env-manager local")
    print("=" * 78)
