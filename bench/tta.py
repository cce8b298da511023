"""Benchmark of test-time augmentation: batched on-device TTA against host-side loops.

    .venv/bin/python bench/tta.py [--backbone mobilenetv3small] [--resolution 96] [--images 256]

One randomly initialised model (weights="none": speed does not depend on the weights) and N random
uint8 images, 17-way TTA (aggressive17), the same --batch-size for every stage (default: what the
scoring pool's actors use on this device, `orchestrator.tta.sizing.device_batch_size`):

1. plain inference: `tta_predict` under the "none" policy (a compiled forward per batch), and
   `model.predict` for reference; the faster of the two is the baseline. Each is timed 17 times
   over the set in a row, so that it lasts as long as the TTA stages: on a shared machine the
   best of a few short runs finds a quiet moment that a long run cannot, which would bias the
   efficiency figure against TTA.
2. `tta_predict` under aggressive17: the 17 variants made on the device, one pass per batch.
3. notebook style: the 17 augmentations made on the host (numpy/cv2, as a notebook would), then one
   `model.predict` over the whole set per augmentation.
4. per image: for each image and augmentation, `model.predict` on that one image. Only
   --per-image images are timed; the time is extrapolated linearly to N.

Also timed, to say where the time goes: making the variants alone (on the device, as in 2) and
the host augmentation alone (as in 3); and, for each of --pass-sizes, plain and TTA inference at
that batch size. Every stage runs once untimed, then the fastest of --repeat rounds is kept.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MEDSWEEP_OFFLINE"] = "1"  # weights="none" never downloads; make sure of it

import cv2  # noqa: E402
import tensorflow as tf  # noqa: E402

from orchestrator.train.devices import gpu_total_memory_mb  # noqa: E402
from orchestrator.models.classifier import build_model  # noqa: E402
from orchestrator.tta.policies import NamedTransform, get_policy  # noqa: E402
from orchestrator.tta.predict import (  # noqa: E402
    apply_transforms,
    images_per_pass,
    tta_predict,
    tta_predict_each,
)
from orchestrator.tta.sizing import device_batch_size  # noqa: E402

FLOORS = {"efficiency": 0.90, "vs_per_augmentation": 1.5, "vs_per_image": 20.0}


def best_of_rounds(repeat: int, stages: dict) -> dict[str, float]:
    """Each stage once untimed (tracing, first allocations), then `repeat` rounds of every stage
    in turn, keeping each stage's fastest: interleaved, so a burst of load from other jobs on a
    shared machine does not land on one stage only."""
    for fn in stages.values():
        fn()
    best = {name: float("inf") for name in stages}
    for _ in range(repeat):
        for name, fn in stages.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def host_augment(image: np.ndarray, t: NamedTransform) -> np.ndarray:
    """One image the notebook way: numpy flips, cv2 rotation (reflected border), numpy brightness;
    the same transform `orchestrator.tta.predict` makes on the device."""
    x = image.astype(np.float32)
    if t.hflip:
        x = x[:, ::-1]
    if t.vflip:
        x = x[::-1]
    if t.angle:
        h, w = x.shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), t.angle, 1.0)
        x = cv2.warpAffine(np.ascontiguousarray(x), matrix, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    if t.brightness:
        x = np.clip(x * (1.0 + t.brightness), 0.0, 255.0)
    return x


def host_augmented(images: np.ndarray, t: NamedTransform) -> np.ndarray:
    return np.stack([host_augment(img, t) for img in images])


def per_augmentation_loop(model, images, transforms, batch_size) -> np.ndarray:
    """Notebook style: augment the whole set on the host, then one model.predict per augmentation."""
    return np.stack([model.predict(host_augmented(images, t), batch_size=batch_size, verbose=0)
                     for t in transforms])


def per_image_loop(model, images, transforms) -> np.ndarray:
    """The slowest notebook pattern: one model.predict call per image and augmentation."""
    return np.stack([
        np.stack([model.predict(host_augment(img, t)[None], verbose=0)[0] for img in images])
        for t in transforms
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, help="model inputs per pass (default: the "
                        "scoring pool's size for this device)")
    parser.add_argument("--per-image", type=int, default=4,
                        help="images timed in the per-image loop (extrapolated to --images)")
    parser.add_argument("--pass-sizes", default="32",
                        help="other batch sizes to time plain and TTA inference at ('' for none)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()

    load_before = os.getloadavg()
    model = build_model(args.backbone, 4, args.resolution, weights="none")
    images = np.random.default_rng(0).integers(
        0, 256, (args.images, args.resolution, args.resolution, 3), np.uint8)
    floats = images.astype(np.float32)
    subset = images[:args.per_image]
    transforms = get_policy("aggressive17")
    plain = get_policy("none")
    gpu_mb = gpu_total_memory_mb() if tf.config.list_physical_devices("GPU") else None
    device_size = device_batch_size(gpu_mb, args.resolution, len(transforms))
    n, t_count, bs = args.images, len(transforms), args.batch_size or device_size
    step = images_per_pass(bs, t_count)
    make_variants = tf.function(lambda x: apply_transforms(x, transforms))
    sizes = list(dict.fromkeys([bs, *(int(s) for s in args.pass_sizes.split(",") if s.strip())]))

    stages = {
        "predict": lambda: [model.predict(floats, batch_size=bs, verbose=0)
                            for _ in range(t_count)],
        "variants": lambda: [make_variants(tf.constant(images[i:i + step]))
                             for i in range(0, n, step)],
        "host_aug": lambda: [host_augmented(images, t).shape for t in transforms],
        "loop": lambda: per_augmentation_loop(model, images, transforms, bs),
        "per_image": lambda: per_image_loop(model, subset, transforms),
    }
    for size in sizes:
        stages[f"plain{size}"] = lambda s=size: [tta_predict(model, images, plain, s)
                                                 for _ in range(t_count)]
        stages[f"tta{size}"] = lambda s=size: tta_predict_each(model, images, transforms, s)
    start = time.perf_counter()
    seconds = best_of_rounds(args.repeat, stages)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    seconds = {k: v / t_count if k == "predict" or k.startswith("plain") else v
               for k, v in seconds.items()}  # plain stages ran 17 times over the set
    t_plain, t_tta = seconds[f"plain{bs}"], seconds[f"tta{bs}"]
    baseline = min(t_plain, seconds["predict"])
    t_per_image = seconds["per_image"] * n / len(subset)

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    print(f"model: {args.backbone} at {args.resolution} px; {n} images, {t_count} transforms, "
          f"batch_size {bs} ({step} images = {step * t_count} inputs per TTA pass); "
          f"best of {args.repeat} rounds, {wall:.0f} s in all")
    device = f"GPU, {gpu_mb} MB" if gpu_mb else "CPU"
    print(f"the scoring pool's pass on this device ({device}): "
          f"batch_size {device_size} = {images_per_pass(device_size, t_count)} images "
          f"(orchestrator.tta.sizing.device_batch_size)")
    print()
    rows = [
        ("1  plain, compiled forward (tta_predict, policy none)", t_plain, 1),
        ("1b plain, model.predict", seconds["predict"], 1),
        ("2  TTA x17, tta_predict (variants made on the device)", t_tta, t_count),
        ("3  TTA x17, host aug + one model.predict per aug", seconds["loop"], t_count),
        (f"4  TTA x17, model.predict per image ({len(subset)} timed, extrapolated)",
         t_per_image, t_count),
    ]
    print(f"{'stage':<68} {'seconds':>8} {'images/s':>9} {'inputs/s':>9}")
    for label, t, per_image in rows:
        print(f"{label:<68} {t:8.3f} {n / t:9.1f} {n * per_image / t:9.1f}")
    print("(inputs/s: images x transforms through the model per second)")
    print()
    print("where the time goes:")
    print(f"  17 x plain (the better of 1 and 1b)     {t_count * baseline:8.3f} s")
    print(f"  making the 17 variants alone (device)   {seconds['variants']:8.3f} s; "
          f"17 x plain / (17 x plain + this) = "
          f"{t_count * baseline / (t_count * baseline + seconds['variants']):.2f}")
    print(f"  17 x model.predict (1b)                 {t_count * seconds['predict']:8.3f} s")
    print(f"  host augmentation alone (numpy/cv2)     {seconds['host_aug']:8.3f} s")
    print()
    print("by batch size (model inputs per pass), plain and TTA at the same batch_size:")
    for size in sizes:
        per = images_per_pass(size, t_count)
        p, t = seconds[f"plain{size}"], seconds[f"tta{size}"]
        print(f"  batch_size {size:4d}: plain {p:7.3f} s; TTA {per:3d} images = {per * t_count:4d}"
              f" inputs per pass, {t:7.3f} s, {n / t:6.1f} images/s; "
              f"17 x plain / TTA {t_count * p / t:.2f}")
    print()
    diff = np.abs(make_variants(tf.constant(subset)).numpy()
                  - np.concatenate([host_augmented(subset, t) for t in transforms]))
    print(f"host (cv2) vs device (TF) variants: max |difference| {diff.max():.4f} of 255")
    print()
    checks = [
        ("efficiency = 17 x plain / TTA", t_count * baseline / t_tta, FLOORS["efficiency"]),
        ("speed-up over the per-augmentation loop", seconds["loop"] / t_tta,
         FLOORS["vs_per_augmentation"]),
        ("speed-up over the per-image loop", t_per_image / t_tta, FLOORS["vs_per_image"]),
    ]
    for label, value, floor in checks:
        print(f"{'PASS' if value >= floor else 'FAIL'}  {label}: {value:.2f} (floor {floor:g})")


if __name__ == "__main__":
    main()
