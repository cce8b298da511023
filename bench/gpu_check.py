"""The GPU paths in one run: a mixed-precision trial, two 0.5-GPU trials sharing one GPU, one
trial on 1 then 2 GPUs (data-parallel workers; skipped on a one-GPU machine), the TTA benchmark
on ResNet50 at 224 px, input-pipeline throughput against synthetic input. One table.

    bench/gpu_check.sh              # on a GPU machine: about 5-8 minutes, no network
    bench/gpu_check.sh --dry-run    # the same code paths on CPU at tiny sizes (tests run it)

On a GPU every check runs in a Ray worker of its own (`max_calls=1`: a fresh TensorFlow per
check, as a trial gets; a dry run's checks share one), the shared-GPU check as a real sweep (`run_sweep`, `gpus_per_trial` 0.5, which caps
each trial's TensorFlow memory). `--dry-run` uses the baseline CNN at 32 px, float32, and CPU
slots instead of GPU fractions: it proves the script, not the GPU. ImageNet weights are never
loaded (`weights="none"`: speed does not depend on them, and there is no network).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MEDSWEEP_OFFLINE"] = "1"


@dataclass(frozen=True)
class Sizes:
    """What each check runs at: the real GPU sizes, or tiny CPU ones for --dry-run."""

    gpu: bool
    backbone: str
    resolution: int
    per_class: int  # brain phantom images per class
    epochs: int
    batch_size: int
    tta_images: int
    tta_per_image: int  # images timed one by one (extrapolated to tta_images)
    repeat: int


GPU = Sizes(True, "resnet50", 224, 64, 3, 32, 256, 4, 3)
DRY = Sizes(False, "baseline_cnn", 32, 12, 2, 8, 16, 2, 1)


@dataclass(frozen=True)
class Row:
    check: str
    setting: str
    figure: str
    status: str  # "ok", or what is wrong


def _trial_config(sizes: Sizes, **extra) -> dict:
    return {"task": "brain", "backbone": sizes.backbone, "resolution": sizes.resolution,
            "weights": "none", "schedule": "full", "epochs": sizes.epochs,
            "batch_size": sizes.batch_size, "augment": "light",
            "phantom_per_class": sizes.per_class, **extra}


# ------------------------------------------------------------------------ checks (Ray workers)
def mixed_precision_trial(sizes: Sizes) -> Row:
    """One trial with mixed_float16 forced on a GPU (float32 in a dry run): the epoch time and
    whether the loss stayed finite (loss scaling works)."""
    import math

    import keras

    from orchestrator.train.trial import train_trial

    marks: list[float] = [time.perf_counter()]
    precision = "on" if sizes.gpu else "off"
    with tempfile.TemporaryDirectory() as out:
        result = train_trial(_trial_config(sizes, mixed_precision=precision), output_dir=out,
                             report=lambda _: marks.append(time.perf_counter()),
                             log=lambda _: None)
    policy = keras.config.dtype_policy().name
    expected = "mixed_float16" if sizes.gpu else "float32"
    finite = all(math.isfinite(row["loss"]) for row in result.history)
    last = marks[-1] - marks[-2]
    status = "ok" if policy == expected and finite else \
        f"policy {policy} (expected {expected}), finite loss {finite}"
    return Row("mixed-precision trial",
               f"{sizes.backbone} {sizes.resolution} px, {result.epochs_run} epochs, {policy}",
               f"{last:.2f} s last epoch; val loss {result.history[-1]['val_loss']:.3f}", status)


def tta_rows(sizes: Sizes) -> list[Row]:
    """bench/tta.py's stages 2-4: batched TTA against the per-augmentation loop and per-image
    `model.predict`, and whether the batched probabilities equal the loop's."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from tta import best_of_rounds, per_augmentation_loop, per_image_loop  # bench/tta.py

    from orchestrator.models.classifier import build_model
    from orchestrator.tta.policies import get_policy
    from orchestrator.tta.predict import tta_predict_each

    model = build_model(sizes.backbone, 4, sizes.resolution, weights="none")
    n = sizes.tta_images
    images = np.random.default_rng(0).integers(0, 256, (n, sizes.resolution, sizes.resolution, 3),
                                               np.uint8)
    from orchestrator.train.devices import gpu_total_memory_mb
    from orchestrator.tta.sizing import device_batch_size

    transforms = get_policy("aggressive17")
    bs = device_batch_size(gpu_total_memory_mb() if sizes.gpu else None, sizes.resolution,
                           len(transforms))  # what the scoring pool's actors use here
    subset = images[:sizes.tta_per_image]
    seconds = best_of_rounds(sizes.repeat, {
        "batched": lambda: tta_predict_each(model, images, transforms, bs),
        "loop": lambda: per_augmentation_loop(model, images, transforms, bs),
        "per_image": lambda: per_image_loop(model, subset, transforms)})
    seconds["per_image"] *= n / len(subset)
    gap = float(np.abs(tta_predict_each(model, subset, transforms, bs)
                       - per_augmentation_loop(model, subset, transforms, bs)).max())
    setting = f"{sizes.backbone} {sizes.resolution} px, {n} images x {len(transforms)}, " \
        f"batch {bs}"
    rows = []
    for name, label in (("batched", "TTA batched (tta_predict_each)"),
                        ("loop", "TTA per-augmentation loop"),
                        ("per_image", "TTA per-image predict")):
        figure = f"{n / seconds[name]:.1f} images/s"
        if name != "batched":
            figure += f" (batched: {seconds[name] / seconds['batched']:.1f}x faster)"
        status = "ok" if name != "batched" or gap < 1e-3 else \
            f"batched and loop probabilities differ by {gap:.2g}"
        rows.append(Row(label, setting + (f", {sizes.tta_per_image} timed"
                                          if name == "per_image" else ""), figure, status))
    return rows


def input_pipeline_rows(sizes: Sizes) -> list[Row]:
    """Training images/s fed by the trial's tf.data pipeline (uint8 gather, cast, light
    augmentation, sample weights) against the same model fed one synthetic batch over and over:
    the gap is what the input pipeline costs the device."""
    import keras
    import numpy as np
    import tensorflow as tf

    from orchestrator.train.augmentations import augmentation_for
    from orchestrator.models.classifier import build_model
    from orchestrator.train.pipeline import training_dataset
    from tasks import get_task

    task, bs, res = get_task("brain"), sizes.batch_size, sizes.resolution
    n = bs * (64 if sizes.gpu else 8)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, res, res, 3), np.uint8)
    y = rng.integers(0, task.num_classes, n)
    real = training_dataset(x, y, num_classes=task.num_classes, batch_size=bs, seed=0,
                            augmentation=augmentation_for("light", task.tta_kinds))
    batch = next(iter(real))
    synthetic = tf.data.Dataset.from_tensors(batch).repeat(n // bs)
    model = build_model(sizes.backbone, task.num_classes, res, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")

    def fit(ds):
        return lambda: model.fit(ds, epochs=1, verbose=0)

    def iterate():
        for _ in real:
            pass

    sys.path.insert(0, str(ROOT / "bench"))
    from tta import best_of_rounds

    seconds = best_of_rounds(sizes.repeat, {"pipeline": fit(real), "synthetic": fit(synthetic),
                                            "alone": iterate})
    ratio = seconds["synthetic"] / seconds["pipeline"]
    setting = f"{sizes.backbone} {res} px, batch {bs}, {n} images"
    return [Row("input pipeline alone (no model)", setting, f"{n / seconds['alone']:.0f} images/s",
                "ok"),
            Row("training fed by the input pipeline", setting,
                f"{n / seconds['pipeline']:.0f} images/s ({ratio:.2f} of synthetic)",
                "ok" if ratio >= 0.8 else "input-bound"),
            Row("training fed synthetic input", setting,
                f"{n / seconds['synthetic']:.0f} images/s", "ok")]


# ------------------------------------------------------------------------ shared GPU (a sweep)
class GpuMemoryWatch:
    """Polls nvidia-smi for every process's GPU memory while the sweep runs: the peak per
    process, and the most processes seen on the GPU at once."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self.peak: dict[str, int] = {}
        self.most_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "GpuMemoryWatch":
        if self.smi:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.smi:
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=20, check=False).stdout
            rows = [line.split(",") for line in out.splitlines() if "," in line]
            self.most_at_once = max(self.most_at_once, len(rows))
            for pid, mb in rows:
                self.peak[pid.strip()] = max(self.peak.get(pid.strip(), 0), int(mb.strip()))


def trial_intervals(experiment_path: str) -> list[tuple[float, float]]:
    """(start, end) wall time of each trial, from Tune's result.json files."""
    intervals = []
    for result in sorted(Path(experiment_path).glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            start = rows[0]["timestamp"] - rows[0]["time_this_iter_s"]
            intervals.append((start, rows[-1]["timestamp"]))
    return intervals


def overlap_seconds(intervals: list[tuple[float, float]]) -> float:
    """How long all the intervals ran at once (0 when any two never met)."""
    if len(intervals) < 2:
        return 0.0
    return max(0.0, min(end for _, end in intervals) - max(start for start, _ in intervals))


def shared_gpu_sweep(sizes: Sizes, workdir: Path) -> Row:
    from orchestrator.train.devices import gpu_memory_limit_for_fraction
    from orchestrator.sweep.runner import run_sweep

    share = 0.5 if sizes.gpu else 0.0
    overrides = {k: v for k, v in _trial_config(sizes).items() if k != "epochs"}
    overrides["mixed_precision"] = "auto"
    with GpuMemoryWatch() as watch:
        result = run_sweep("brain", profile="smoke", num_samples=2, max_epochs=sizes.epochs,
                           cpus_per_trial=1.0, gpus_per_trial=share, cv_folds=0,
                           scheduler="fifo", ensemble=False, space_overrides=overrides,
                           storage_path=str(workdir / "sweeps"),
                           tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", log=lambda _: None)
    together = overlap_seconds(trial_intervals(result.experiment_path))
    ok = (result.leaderboard["status"] == "completed").sum()
    problems = [f"{2 - ok} trial(s) failed"] if ok < 2 else []
    if together <= 0:
        problems.append("the two trials never ran at the same time")
    if sizes.gpu:
        cap = gpu_memory_limit_for_fraction(share) or 0
        peaks = sorted(watch.peak.values(), reverse=True)[:2]
        memory = f"peak {', '.join(map(str, peaks))} MB, cap {cap} MB each"
        setting = f"2 trials x {share} GPU, {sizes.backbone} {sizes.resolution} px"
        if watch.most_at_once < 2:
            problems.append("never two processes on the GPU at once")
        if any(p > cap * 1.05 + 600 for p in peaks):  # + TF's CUDA context, outside the cap
            problems.append("a trial went over its memory cap")
    else:
        memory = "no GPU: 1 CPU slot per trial instead"
        setting = f"2 trials x 1 CPU slot, {sizes.backbone} {sizes.resolution} px"
    return Row("two trials sharing a device", setting,
               f"{together:.1f} s side by side; {memory}", "; ".join(problems) or "ok")


def data_parallel_trial(sizes: Sizes, workdir: Path) -> Row:
    """The same one-trial sweep on 1 device, then on 2 as two data-parallel workers
    (`--workers-per-trial 2`, `sweep/parallel.py`), the global batch unchanged: the median
    epoch seconds after the first (tracing) of each, and the speed-up. A device is a GPU, or
    one CPU slot in a dry run; fewer than 2 GPUs: the row says it was skipped and why."""
    import ray
    from orchestrator.sweep.runner import run_sweep

    setting = f"1 trial, 1 then 2 workers, {sizes.backbone} {sizes.resolution} px"
    check = "one trial on 1 vs 2 devices"
    gpus = ray.cluster_resources().get("GPU", 0)
    if sizes.gpu and gpus < 2:
        return Row(check, setting, "-", f"skipped: needs 2 GPUs, this cluster has {gpus:g}")
    medians, problems = {}, []
    overrides = {k: v for k, v in _trial_config(sizes).items() if k != "epochs"}
    for workers in (1, 2):
        result = run_sweep("brain", profile="smoke", num_samples=1,
                           max_epochs=max(sizes.epochs, 2), cpus_per_trial=float(workers),
                           gpus_per_trial=float(workers) if sizes.gpu else 0.0,
                           workers_per_trial=workers, cv_folds=0, scheduler="fifo",
                           ensemble=False, space_overrides=overrides,
                           storage_path=str(workdir / f"workers-{workers}"),
                           tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                           log=lambda _: None)
        seconds = [row["epoch_seconds"] for result_file in
                   Path(result.experiment_path).glob("*/result.json")
                   for row in map(json.loads, result_file.read_text().splitlines())][1:]
        if (result.leaderboard["status"] != "completed").any() or not seconds:
            problems.append(f"the {workers}-worker trial failed")
            continue
        medians[workers] = sorted(seconds)[len(seconds) // 2]
    if problems:
        return Row(check, setting, "-", "; ".join(problems))
    device = "GPU" if sizes.gpu else "CPU slot"
    return Row(check, setting, f"epoch {medians[1]:.2f} s on 1 {device}, {medians[2]:.2f} s on "
               f"2: x{medians[1] / medians[2]:.2f}", "ok")


# ------------------------------------------------------------------------------------- main
def _on_worker(fn, sizes: Sizes, gpus: float):
    """Run `fn(sizes)` in a Ray worker holding `gpus` GPUs and every CPU slot: on a GPU a fresh
    worker per check (its own TensorFlow and device memory, as a trial gets); in a dry run one
    worker serves every check (float32 on CPU: nothing to keep apart, two TensorFlow starts
    fewer)."""
    import ray

    cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0))
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1 if sizes.gpu else 0)(fn)
    return ray.get(remote.remote(sizes))


def print_table(rows: list[Row]) -> None:
    widths = [max(len(h), *(len(getattr(r, f)) for r in rows))
              for h, f in (("check", "check"), ("setting", "setting"), ("figure", "figure"),
                           ("status", "status"))]
    line = " | ".join
    print(line(h.ljust(w) for h, w in zip(("check", "setting", "figure", "status"), widths)))
    print(line("-" * w for w in widths))
    for r in rows:
        print(line(v.ljust(w) for v, w in zip((r.check, r.setting, r.figure, r.status), widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: tests the "
                        "script, measures nothing about a GPU")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    import ray

    from orchestrator.cluster import connect_ray

    started = time.perf_counter()
    connect_ray(None, lambda _: None)
    gpus = ray.cluster_resources().get("GPU", 0)
    if sizes.gpu and gpus < 1:
        print("error: no GPU in this Ray cluster; run with --dry-run on CPU", file=sys.stderr)
        return 2
    one = 1.0 if sizes.gpu else 0.0
    rows: list[Row] = [_on_worker(mixed_precision_trial, sizes, one)]
    with tempfile.TemporaryDirectory(prefix="medsweep-gpu-check-") as tmp:
        rows.append(shared_gpu_sweep(sizes, Path(tmp)))
    with tempfile.TemporaryDirectory(prefix="medsweep-gpu-check-") as tmp:
        rows.append(data_parallel_trial(sizes, Path(tmp)))
    rows += _on_worker(tta_rows, sizes, one)
    rows += _on_worker(input_pipeline_rows, sizes, one)
    ray.shutdown()
    print(f"\nGPU check{' (DRY RUN: CPU, tiny sizes)' if args.dry_run else ''}: "
          f"{gpus:g} GPU, {os.cpu_count()} cores, {time.perf_counter() - started:.0f} s")
    print_table(rows)
    return 0 if all(r.status in ("ok", "input-bound") or r.status.startswith("skipped")
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
