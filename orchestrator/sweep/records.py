"""What a sweep writes about itself: the files that record its data (beside the manifest) and
their counts, logged in the parent run; and the leaderboard of its trials."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from orchestrator.data.dataset import DUPLICATES_CSV, LEFT_OUT_CSV, UNREADABLE_CSV
from orchestrator.data.splits import MANIFEST_CSV, MANIFEST_JSON
from orchestrator.naming import STOPPED_EARLY, short_trial_name

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
        rows.append({"trial_id": short_trial_name(metrics.get("trial_id", "")),
                     f"best_{metric}": best,
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
