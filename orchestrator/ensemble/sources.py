"""Where the final ensemble's evidence comes from: the sweep's runs, the split it recorded and
the trained models, gathered as `HeldOut` (each candidate configuration's models and the
held-out images they predict). Under cross-validation that is every finalist's K fold models,
each predicting its own fold; otherwise the top search trials on the validation split. Nothing
here reads a test label.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator import tracking
from orchestrator.errors import ConfigError
from orchestrator.naming import STOPPED_EARLY, candidate_name
from orchestrator.train.artifacts import BEST_MODEL, VAL_LABELS
from orchestrator.tta.pool import Candidate

Log = Callable[[str], None]


@dataclass(frozen=True)
class SweepInfo:
    uri: str
    parent_run_id: str
    experiment_id: str
    task: str
    data_notes: tuple[str, ...] = ()
    synthetic: bool = False
    name: str = ""  # the sweep run's name, as the MLflow UI shows it
    keep_duplicates: bool = False  # copies were kept apart (--keep-duplicates)


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
    groups: np.ndarray | None = None  # each held-out image's group (patient, lesion), as `y`

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


def sweep_info(uri: str, run_id: str) -> SweepInfo:
    run = tracking.get_run(uri, run_id)
    if run.data.tags.get(tracking.TAG_KIND) != tracking.KIND_SWEEP:
        raise ConfigError(f"MLflow run {run_id} is not a MedSweep sweep run")
    params = run.data.params
    return SweepInfo(uri=uri, parent_run_id=run_id, experiment_id=run.info.experiment_id,
                     task=params["task"],
                     synthetic=run.data.tags.get(tracking.TAG_SYNTHETIC, "true") != "false",
                     data_notes=_data_notes(params), name=run.info.run_name or run_id,
                     keep_duplicates=params.get("keep_duplicates") in ("true", "True"))


def _data_notes(params: dict) -> tuple[str, ...]:
    """The sweep's data facts (parent-run params) as sentences for the report."""
    if "images" not in params:
        return ()
    grouping = ("copies were kept apart (--keep-duplicates): test figures can be inflated"
                if params.get("keep_duplicates") in ("true", "True") else
                "copies share a group, so no split separates them")
    return (f"{params['images']} images used; {params.get('images_unreadable', 0)} missing or "
            "unreadable file(s) were left out before splitting (unreadable.csv in the sweep run).",
            f"{params.get('duplicate_pairs', 0)} duplicate image pair(s) (exact or near copies) "
            f"were found before splitting; {grouping}; "
            f"{params.get('duplicates_left_out', 0)} copy(ies) left out because a copy sits in a "
            "held-out split (duplicates.csv, duplicates_left_out.csv).")


def recorded_manifest(sweep: SweepInfo, work: Path) -> Path:
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


def ranked_trials(sweep: SweepInfo, task) -> tuple[list, pd.DataFrame]:
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
        status = tags.get(tracking.TAG_STATUS, "")
        rows.append({"trial": trial, f"best_{key}": best[run.info.run_id],
                     "status": STOPPED_EARLY if status == tracking.STATUS_STOPPED_EARLY
                     else status,
                     "epochs": tags.get(tracking.TAG_EPOCHS_RUN, ""),
                     **{k: params.get(k, "") for k in ("backbone", "resolution", "schedule",
                                                        "lr_multiplier", "loss", "augment")},
                     "label": run.info.run_name or trial})
    return runs, pd.DataFrame(rows)


def holdout(sweep: SweepInfo, task, ranked: list, top_k: int, work: Path, log: Log,
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
            data[resolution] = load_recorded(task, recorded_manifest(sweep, work), resolution,
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
                   data=data, groups=first.table.loc[first.table["split"] == "val",
                                                     "group"].to_numpy())


def cross_validated(sweep: SweepInfo, task, runs: list, work: Path, log: Log,
                     data_dir: str | None) -> HeldOut:
    """Every finalist of the cross-validation stage with its K fold models; each fold model
    predicts the fold it never saw (checked: its saved labels are that fold's)."""
    from orchestrator.data.dataset import load_recorded

    by_finalist: dict[str, list] = {}  # each seed of a finalist (--replicates) is a candidate
    for run in runs:
        if run.data.tags.get(tracking.TAG_STATUS) == tracking.STATUS_COMPLETED:
            name = candidate_name(run.data.tags[tracking.TAG_FINALIST],
                                  int(run.data.tags.get(tracking.TAG_REPLICATE, "0")))
            by_finalist.setdefault(name, []).append(run)
    data, models, images, positions = {}, {}, {}, {}
    for finalist, fold_runs in sorted(by_finalist.items()):
        resolution = int(fold_runs[0].data.params["resolution"])
        if resolution not in data:
            data[resolution] = load_recorded(task, recorded_manifest(sweep, work), resolution,
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
            y_fold = prepared.targets(pool.iloc[rows])
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
    y = first.targets(pool)
    return HeldOut(kind="out-of-fold", models=models, images=images, positions=positions, y=y,
                   data=data, groups=pool["group"].to_numpy())


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
