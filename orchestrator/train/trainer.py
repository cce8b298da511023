"""The Keras side of `train_trial`: build, phase through the unfreezing schedule, checkpoint.

Kept apart from `trial.py` so importing the CLI or the config never imports TensorFlow.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from orchestrator import metrics as M
from orchestrator.train.config import TrialConfig
from orchestrator.train.devices import configure_devices, gpu_memory_limit_for_fraction
from orchestrator.train.augmentations import augmentation_for
from orchestrator.models.backbones import get_backbone
from orchestrator.errors import InjectedFault
from orchestrator.models.heads import TargetScale, as_matrix
from orchestrator.models.classifier import build_model
from orchestrator.train.outputs import training_outputs
from orchestrator.train.schedules import get_schedule, plan_epochs, scale_schedule
from orchestrator.train.artifacts import (BEST_FILES, BEST_MODEL, CHECKPOINT_DIR,
                                          CHECKPOINT_FILES, CONFIG,
                                          FAULT_MARKER, HISTORY, INPUTS, LAST_MODEL, RESULT,
                                          STATE, VAL_LABELS, VAL_PATHS, VAL_PROBS, EpochReport,
                                          Reporter, TrialData, TrialResult)
from orchestrator.train.phases import current_learning_rate, make_optimizer, set_trainable


Strategy = Callable[[], tf.distribute.Strategy]


class Trainer:
    """Runs one trial; holds the bookkeeping the epoch callback updates.

    `strategy` makes the strategy the model is built, restored and trained under, once the
    devices are configured: TensorFlow's default (one process) unless given, e.g.
    `distributed.multi_worker_strategy` for one of several data-parallel workers."""

    def __init__(self, cfg: TrialConfig, data: TrialData, output_dir: Path,
                 report: Reporter | None, log: Callable[[str], None],
                 strategy: Strategy | None = None) -> None:
        self.cfg, self.data, self.out, self.report, self.log = cfg, data, output_dir, report, log
        self.strategy = strategy or tf.distribute.get_strategy
        self.task = data.task
        self.metric_key = f"val_{self.task.metric}"
        self.history: list[dict[str, float]] = []
        self.best_metric: float | None = None
        self.best_epoch = 0
        self.epochs_done = 0
        self.stop_all = False
        self.fault_armed = cfg.fail_at_epoch > 0

    # ------------------------------------------------------------------------------- run
    def run(self, resume_from: Path | None) -> TrialResult:
        self.out.mkdir(parents=True, exist_ok=True)
        devices = configure_devices(
            cpu_threads=self.cfg.cpu_threads or None, mixed_precision=self.cfg.mixed_precision,
            gpu_memory_limit_mb=gpu_memory_limit_for_fraction(self.cfg.gpu_memory_fraction))
        for item in devices["not_applied"]:
            self.log(f"warning: device setting not applied: {item}")
        for item in devices["notes"]:
            self.log(f"note: {item}")
        with self.strategy().scope():
            return self._run(resume_from)

    def _run(self, resume_from: Path | None) -> TrialResult:
        keras.utils.set_random_seed(self.cfg.seed)
        loss_name = self.cfg.loss or self.task.loss
        class_weights = self._class_weights(loss_name)
        self._write_inputs(loss_name, class_weights)
        plan = plan_epochs(scale_schedule(get_schedule(self.cfg.schedule), self.cfg.lr_multiplier),
                           self.cfg.epochs)
        model = self._resume(resume_from) if resume_from else None
        resumed = model is not None
        model = model or self._build()
        dataset = self._dataset(class_weights)
        steps = _steps(len(self.data.x_train), self.cfg.batch_size,
                       tf.distribute.get_strategy().num_replicas_in_sync)
        loss, loss_weights = self._loss(loss_name)
        for index, planned in enumerate(plan):
            if planned.end_epoch <= self.epochs_done or self.stop_all:
                continue
            if not (resumed and planned.start_epoch < self.epochs_done):
                trainable, total = set_trainable(model, planned.phase.trainable_fraction,
                                                 train_batchnorm=self.train_batchnorm)
                model.compile(optimizer=make_optimizer(planned.phase, steps,
                                                       planned.end_epoch - planned.start_epoch),
                              loss=loss, loss_weights=loss_weights)
                self.log(f"phase {index + 1}/{len(plan)}: epochs {planned.start_epoch + 1}-"
                         f"{planned.end_epoch}, {trainable}/{total} backbone layers trainable, "
                         f"lr {planned.phase.learning_rate:.1e} ({planned.phase.decay})")
            resumed = False
            model.fit(dataset, epochs=planned.end_epoch, initial_epoch=self.epochs_done,
                      shuffle=False, verbose=0,
                      callbacks=[_EpochCallback(self, index, len(plan))])
        return self._finish()

    @property
    def weights(self) -> str:
        if self.cfg.weights != "auto":
            return self.cfg.weights
        return "imagenet" if get_backbone(self.cfg.backbone).pretrainable else "none"

    @property
    def train_batchnorm(self) -> bool:
        """Frozen BatchNorm keeps ImageNet statistics; without them there is nothing to keep."""
        return self.cfg.train_batchnorm or self.weights == "none"

    def _build(self) -> keras.Model:
        return build_model(self.cfg.backbone, self.task.num_classes, self.cfg.resolution,
                           weights=self.weights, weights_dir=self.cfg.weights_dir,
                           dropout=self.cfg.dropout, heads=self.task.heads,
                           target_scales=self.scales,
                           frequency_stream=self.cfg.frequency_stream)

    @functools.cached_property
    def outputs(self):
        return training_outputs(self.task)

    @functools.cached_property
    def scales(self) -> dict[str, TargetScale]:
        """Regression heads' training mean and spread (none without regression heads)."""
        return self.outputs.scales(self.data.y_train)

    def _class_weights(self, loss_name: str):
        """Balanced class weights from the training split (per classification head)."""
        if loss_name != "class_weighted":
            return None
        return self.outputs.class_weights(self.data.y_train)

    def _dataset(self, class_weights):
        augmentation = augmentation_for(self.cfg.augment, self.task.tta_kinds,
                                        measures=any(not h.is_classification
                                                     for h in self.task.heads))
        dataset = self.outputs.dataset(self.data.x_train, self.data.y_train,
                                       batch_size=self.cfg.batch_size, seed=self.cfg.seed,
                                       augmentation=augmentation,
                                       mixup_alpha=self.cfg.mixup_alpha,
                                       class_weights=class_weights)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:  # a last batch smaller than the workers leaves one without data,
            # and Keras 3 cannot step a worker on an empty batch: that batch is left out
            dataset = dataset.filter(
                lambda *batch: tf.shape(tf.nest.flatten(batch)[0])[0] >= replicas)
        return dataset

    def _loss(self, loss_name: str):
        """The loss (a dict per head for a multi-head task) and the heads' weights (None)."""
        return self.outputs.loss(
            loss_name, self.scales, self.cfg.head_weights,
            label_smoothing=_default(self.cfg.label_smoothing, self.task.label_smoothing),
            focal_gamma=_default(self.cfg.focal_gamma, self.task.focal_gamma))

    def _resume(self, checkpoint: Path) -> keras.Model | None:
        """Restore the model (optimizer state included), the bookkeeping and the best files."""
        state_file = checkpoint / STATE
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        self.epochs_done, self.best_epoch = state["epochs_done"], state["best_epoch"]
        self.best_metric, self.history = state["best_metric"], state["history"]
        self.fault_armed = self.fault_armed and not (checkpoint / FAULT_MARKER).exists()
        for name in CHECKPOINT_FILES:
            src, dst = checkpoint / name, self.out / name
            if src.exists() and not (dst.exists() and os.path.samefile(src, dst)):
                shutil.copy2(src, dst)
        self.log(f"resumed from {checkpoint} after epoch {self.epochs_done} "
                 f"(best {self.metric_key} {self.best_metric} at epoch {self.best_epoch})")
        return keras.models.load_model(checkpoint / LAST_MODEL)

    # ------------------------------------------------------------------------- per epoch
    def end_epoch(self, model: keras.Model, epoch: int, logs: dict, phase: int, phases: int,
                  seconds: float) -> None:
        probs = as_matrix(model.predict(self.data.x_val, batch_size=max(self.cfg.batch_size, 64),
                                        verbose=0), self.task)
        scores = M.classification_metrics(self.data.y_val, probs, self.task)
        row = {"epoch": epoch, "phase": phase + 1, "loss": float(logs.get("loss", float("nan"))),
               "lr": current_learning_rate(model.optimizer), "epoch_seconds": seconds}
        row.update({f"val_{k}": v for k, v in scores.items()})
        self.history.append(row)
        self.epochs_done = epoch
        # A cross-validation trial trains a fixed number of epochs and keeps the last: choosing
        # its epoch on the fold it predicts would make its out-of-fold predictions optimistic.
        is_best = self.cfg.cv_fold >= 0 or M.is_better(row[self.metric_key], self.best_metric,
                                                       self.task.mode)
        if is_best:
            self.best_metric, self.best_epoch = row[self.metric_key], epoch
            self._save_best(model, probs)
        pd.DataFrame(self.history).to_csv(self.out / HISTORY, index=False)
        fault = self.fault_armed and epoch >= self.cfg.fail_at_epoch
        checkpoint = self._checkpoint(model, fault)
        self.log(self._epoch_line(row, phase, phases, is_best))
        if self.report is not None:
            self.report(EpochReport(epoch, row, is_best, checkpoint))
        patience = self.cfg.early_stopping_patience
        if patience and epoch - self.best_epoch >= patience:
            self.log(f"early stopping: no better {self.metric_key} for {patience} epochs")
            model.stop_training, self.stop_all = True, True
        if fault:
            raise InjectedFault(f"fault injected after epoch {epoch} (fail_at_epoch)")

    def _save_best(self, model: keras.Model, probs: np.ndarray) -> None:
        """Write each file beside its old version and rename it into place: a new inode, so
        the hard links in the previous checkpoint keep the previous best intact."""
        model.save(self.out / f"tmp-{BEST_MODEL}")
        np.save(self.out / f"tmp-{VAL_PROBS}", probs.astype(np.float32))
        np.save(self.out / f"tmp-{VAL_LABELS}", self.data.y_val)
        for name in BEST_FILES:
            os.replace(self.out / f"tmp-{name}", self.out / name)

    def _checkpoint(self, model: keras.Model, fault: bool) -> Path:
        """Write a complete checkpoint beside the old one, then swap: never a half-written one.
        A checkpoint taken just before an injected fault says so, and resuming from it disarms
        the fault (wherever Tune copied it)."""
        final, tmp = self.out / CHECKPOINT_DIR, self.out / f"{CHECKPOINT_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if fault:
            (tmp / FAULT_MARKER).write_text("injected once\n")
        model.save(tmp / LAST_MODEL)
        for name in CHECKPOINT_FILES:
            if (self.out / name).exists():
                _link_or_copy(self.out / name, tmp / name)
        state = {"epochs_done": self.epochs_done, "best_epoch": self.best_epoch,
                 "best_metric": self.best_metric, "history": self.history}
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        old = self.out / f"{CHECKPOINT_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _epoch_line(self, row: dict, phase: int, phases: int, is_best: bool) -> str:
        extra = ""
        if "val_predicted_positive_rate" in row:
            extra = f" ppr {row['val_predicted_positive_rate']:.2f}"
        return (f"epoch {row['epoch']}/{self.cfg.epochs} [phase {phase + 1}/{phases}, "
                f"lr {row['lr']:.1e}] loss {row['loss']:.4f} val_loss {row['val_loss']:.4f} "
                f"{self.metric_key} {row[self.metric_key]:.4f}{' *' if is_best else ''}"
                f"{extra} ({row['epoch_seconds']:.1f}s)")

    # ------------------------------------------------------------------------------ end
    def _write_inputs(self, loss_name: str, class_weights: np.ndarray | None) -> None:
        (self.out / CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=1))
        weights = (None if class_weights is None
                   else self.outputs.recorded_class_weights(class_weights))
        meta = {"task": self.task.summary(), "loss": loss_name, "class_weights": weights,
                **self.outputs.recorded_scales(self.scales),
                "train_size": len(self.data.y_train), "val_size": len(self.data.y_val),
                "data_fingerprint": self.data.fingerprint, "synthetic": self.data.synthetic,
                "manifest": self.data.manifest_path}
        (self.out / INPUTS).write_text(json.dumps(meta, indent=1))
        (self.out / VAL_PATHS).write_text("\n".join(self.data.val_paths) + "\n")

    def _finish(self) -> TrialResult:
        result = TrialResult(config=self.cfg.to_dict(), metric=self.task.metric,
                             mode=self.task.mode, best_metric=_as_float(self.best_metric),
                             best_epoch=self.best_epoch, epochs_run=self.epochs_done,
                             output_dir=self.out, synthetic=self.data.synthetic,
                             history=self.history)
        summary = {k: v for k, v in result.__dict__.items() if k not in ("history",)}
        summary["output_dir"] = str(self.out)
        (self.out / RESULT).write_text(json.dumps(summary, indent=1, default=str))
        return result


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, trainer: Trainer, phase: int, phases: int) -> None:
        super().__init__()
        self.trainer, self.phase, self.phases = trainer, phase, phases
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.end_epoch(self.model, epoch + 1, logs or {}, self.phase, self.phases,
                               time.perf_counter() - self.started)


def _steps(images: int, batch_size: int, replicas: int) -> int:
    """Optimizer steps per epoch: every batch, less a last one smaller than the replicas."""
    full, last = divmod(images, batch_size)
    return full + (1 if last >= replicas else 0)


def _default(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


def _as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
