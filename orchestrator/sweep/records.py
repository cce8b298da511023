"""What a sweep writes about itself: the files that record its data (beside the manifest) and
their counts, logged in the parent run; and the leaderboard of its trials."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from orchestrator.data.dataset import DUPLICATES_CSV, LEFT_OUT_CSV, UNREADABLE_CSV
from orchestrator.data.splits import MANIFEST_CSV, MANIFEST_JSON

# parent-run param -> the record whose rows it counts
DATA_FACTS = {"images": MANIFEST_CSV, "images_unreadable": UNREADABLE_CSV,
              "duplicate_pairs": DUPLICATES_CSV, "duplicates_left_out": LEFT_OUT_CSV}
LEADERBOARD_COLUMNS = ("backbone", "resolution", "schedule", "lr_multiplier", "loss",
                       "augment", "mixup_alpha", "label_smoothing", "batch_size",
                       "frequency_stream", "head_weights")


def data_records(manifest: Path) -> dict[str, Path]:
    """The files that record the data a sweep saw, written beside its manifest: the manifest
    (every image's class, group, split and content hash), what was left out unreadable, and
    every duplicate pair with where each copy went. Logged in the parent run."""
    folder = manifest.parent
    names = (manifest.name, MANIFEST_JSON, UNREADABLE_CSV, DUPLICATES_CSV, LEFT_OUT_CSV)
    return {name: folder / name for name in names if (folder / name).is_file()}


def data_facts(records: dict[str, Path]) -> dict[str, int]:
    """Counts for the parent run's params and the console: images used, left out, duplicates."""
    def rows(name: str) -> pd.DataFrame:
        path = records.get(name)
        return pd.read_csv(path, dtype=str, keep_default_na=False) if path else pd.DataFrame()

    return {fact: len(rows(name)) for fact, name in DATA_FACTS.items()}


def data_line(facts: Mapping[str, int]) -> str:
    """The console's line about the data a sweep used (`data_facts`)."""
    return (f"data: {facts['images']} images; {facts['images_unreadable']} missing or "
            f"unreadable left out; {facts['duplicate_pairs']} duplicate pair(s) grouped, "
            f"{facts['duplicates_left_out']} copy(ies) left out (files in the parent run)")


STOPPED_EARLY = "stopped early (ASHA)"
# How a searched key shows in a trial's run name: a value alone where it names itself.
_NAME_FORMS = {"backbone": "{}", "schedule": "{}", "loss": "{}", "resolution": "{}px",
               "augment": "aug {}", "lr_multiplier": "lr x{}", "label_smoothing": "ls {}",
               "mixup_alpha": "mixup {}", "batch_size": "bs {}", "dropout": "dropout {}",
               "focal_gamma": "gamma {}", "weights": "{} weights"}


def short_trial_name(trial_id: str) -> str:
    """`f35f0_00003` -> `t03`: Tune's counter, which the console and the leaderboard show."""
    counter = trial_id.rsplit("_", 1)[-1]
    return f"t{int(counter):02d}" if counter.isdigit() else trial_id


def trial_run_name(trial_id: str, config: Mapping[str, Any], searched: Sequence[str]) -> str:
    """`t03 resnet50 224px three_phase lr x4.042`: the trial's number and what differs between
    trials (every searched key, floats to 4 significant digits), so names tell runs apart in
    the MLflow runs table."""
    parts = [short_trial_name(trial_id)]
    for key in searched:
        if key in config:
            value = config[key]
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(_NAME_FORMS.get(key, key + " {}").format(text))
    return " ".join(parts)


def cv_run_name(finalist_id: str, fold: int, folds: int, replicate: int = 0) -> str:
    """`cv t03 fold 2/3`: a cross-validation trial, by its finalist's number and its fold,
    counted from 1 (the tag `medsweep.fold` and the param `cv_fold` count from 0); an extra
    seed of the finalist (`--replicates`) is `cv t03 seed 2 fold 2/3`."""
    seed = f" seed {replicate + 1}" if replicate else ""
    return (f"cv {short_trial_name(finalist_id)}{seed} fold {fold + 1}"
            + (f"/{folds}" if folds else ""))


def leaderboard(grid, metric: str, mode: str, max_epochs: int | None = None) -> pd.DataFrame:
    """One row per trial (its best validation metric, epochs, seconds, status and searched
    values), best first; NaN metrics last. A trial that ended without error before
    `max_epochs` was stopped by the scheduler."""
    rows = []
    for result in grid:
        config = result.config or {}
        metrics = result.metrics or {}
        best = result.metrics_dataframe[metric].agg("max" if mode == "max" else "min") \
            if result.metrics_dataframe is not None and metric in result.metrics_dataframe \
            else float("nan")
        rows.append({"trial_id": metrics.get("trial_id", ""), f"best_{metric}": best,
                     "epochs": metrics.get("epoch", 0),
                     "seconds": round(float(metrics.get("time_total_s", float("nan"))), 1),
                     "status": "errored" if result.error else STOPPED_EARLY
                     if max_epochs and metrics.get("epoch", 0) < max_epochs else "completed",
                     **{k: config.get(k) for k in LEADERBOARD_COLUMNS if k in config}})
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    return board.sort_values(f"best_{metric}", ascending=(mode == "min"),
                             na_position="last").reset_index(drop=True)


def replicate_of(sampled: Mapping[str, Any]) -> int:
    """Which seed of its finalist a cross-validation trial trains (0: the finalist's own)."""
    return int(sampled.get("replicate", 0))


def replicate_seed(seed: int, replicate: int) -> int:
    """Replicate r trains with seed + 1000 r: far from any seed a search samples."""
    return seed + 1000 * replicate


def candidate_name(finalist: str, replicate: int) -> str:
    """How the ensemble calls one seed of a finalist: its trial id, `-r<k>` for extra seeds."""
    return finalist if replicate == 0 else f"{finalist}-r{replicate}"
