"""One training trial, end to end, without Ray: `train_trial(config)`.

The sweep calls the same function inside each Tune trial and plugs its reporter into the
per-epoch callback. Everything a later stage needs lands in `output_dir` (`artifacts.py` lists
it): the best model, its validation probabilities (ensembling never retrains), the history and a
resumable checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator.train.config import TrialConfig
from orchestrator.train.artifacts import FoldedData, Reporter, TrialData, TrialResult
from tasks import get_task


def load_trial_data(config: TrialConfig, log: Callable[[str], None] = print,
                    manifest: str | Path | None = None) -> TrialData:
    """Prepare (or load from cache) the task's data at the trial's resolution; with `manifest`,
    the data exactly as recorded there (never split again, every file checked unchanged)."""
    from orchestrator.data.dataset import load_recorded, prepare_dataset

    if manifest is not None:
        prepared = load_recorded(get_task(config.task), manifest, config.resolution, log=log)
    else:
        task = get_task(config.task).with_dicom(config.dicom_window, config.dicom_frame)
        prepared = prepare_dataset(task, config.data_dir, config.resolution,
                                   split_seed=config.split_seed,
                                   keep_duplicates=config.keep_duplicates,
                                   duplicate_threshold=config.duplicate_threshold,
                                   positive_class=config.positive_class,
                                   cv_folds=config.cv_folds,
                                   phantom_per_class=config.phantom_per_class,
                                   phantom_format=config.phantom_format, log=log)
    x_train, y_train = prepared.arrays("train")
    x_val, y_val = prepared.arrays("val")
    return TrialData(task=prepared.task, x_train=x_train, y_train=y_train, x_val=x_val,
                     y_val=y_val, val_paths=tuple(prepared.paths("val")),
                     fingerprint=prepared.fingerprint, synthetic=prepared.synthetic,
                     manifest_path=str(prepared.manifest_path))


def load_folded_data(config: TrialConfig, manifest: str | Path,
                     log: Callable[[str], None] = print) -> FoldedData:
    """Every non-test image of the recorded split with its fold, at the config's resolution."""
    from orchestrator.data.dataset import load_recorded

    prepared = load_recorded(get_task(config.task), manifest, config.resolution, log=log)
    if prepared.folds < 2:
        raise ValueError(f"{manifest} records no cross-validation folds")
    rows = prepared.table[prepared.table["split"] != "test"]
    x, y = prepared.rows_arrays(rows)
    return FoldedData(task=prepared.task, x=x, y=y, fold=rows["fold"].astype(int).to_numpy(),
                      paths=tuple(rows["path"]), fingerprint=prepared.fingerprint,
                      synthetic=prepared.synthetic, manifest_path=str(prepared.manifest_path))


def train_trial(
    config: TrialConfig | Mapping[str, Any],
    data: TrialData | None = None,
    *,
    output_dir: str | Path,
    report: Reporter | None = None,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
    strategy: Callable[[], Any] | None = None,
) -> TrialResult:
    """Train one config; resume from a checkpoint directory written by an earlier attempt.
    `strategy`: makes the tf.distribute strategy to train under (`Trainer`); None: one process.

    Every name in the config (task, backbone, schedule, ...) was checked when the TrialConfig
    was built, so a bad one fails here before any data is read."""
    from orchestrator.train.trainer import Trainer  # TensorFlow loads only when a trial runs

    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    if data is None and cfg.cv_fold >= 0:
        raise ValueError("a cross-validation trial takes its fold's data (FoldedData)")
    data = data if data is not None else load_trial_data(cfg, log)
    trainer = Trainer(cfg, data, Path(output_dir), report=report, log=log,
                      strategy=strategy)
    return trainer.run(Path(resume_from) if resume_from else None)
