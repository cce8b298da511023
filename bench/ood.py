"""Benchmark of the out-of-distribution flag (`orchestrator.clinical.ood`): the share of images
flagged, in distribution and on shifted sets, for two embeddings (`pool`, the backbone's pooled
features, and `head_dense`, the penultimate Dense+ReLU).

    .venv/bin/python bench/ood.py [--epochs 8] [--false-alarm 0.05]

Two models, each the baseline CNN from scratch (weights="none", nothing downloaded), trained
here with plain Keras `fit`; statistics fitted on the training split, the cut on the validation
split at --false-alarm, the shares measured on the test split and on shifted sets:

1. phantoms (our own drawing, easier than real images): the brain task at 48 px; shifted sets
   are the skin phantom (another task's images sent to the brain model), the brain phantom's
   no-tumour images (a class the 3-class model never saw: near, not foreign), uniform noise,
   blank images (constant: always flagged), the test images inverted and heavily blurred;
2. real images that installed packages ship: scikit-learn's handwritten digits (64 px, classes
   0-9); shifted sets are windows of scikit-image's and scikit-learn's photographs
   (`tests/real_images.windows`), uniform noise, blank images and the test digits inverted.

Every image goes through the task's own preprocessing (`preprocess_image`), as serving does.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MEDSWEEP_OFFLINE"] = "1"

import cv2  # noqa: E402
import keras  # noqa: E402

from orchestrator.clinical import ood  # noqa: E402
from orchestrator.data.cache import decode_image, preprocess_image  # noqa: E402
from orchestrator.models.classifier import build_model  # noqa: E402
from orchestrator.models.embeddings import embeddings  # noqa: E402
from tasks.base import Preprocessing  # noqa: E402

LAYERS = ("pool", "head_dense")
FOREIGN_FLOOR = 0.95  # the share of each clearly foreign set the flag should reach


def train(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = build_model("baseline_cnn", classes, x.shape[1], head_units=128)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x.astype(np.float32), y, batch_size=16, epochs=epochs, verbose=0)
    return model


def shares(model, layer: str, y_train, sets: dict, false_alarm: float) -> dict[str, float]:
    """Fit on `train`, cut on `val`, the share flagged of every other set."""
    stats = ood.fit_statistics(embeddings(model, sets["train"], layer), y_train)
    score = {k: ood.mahalanobis(stats, embeddings(model, v, layer)) for k, v in sets.items()}
    cut = ood.fit_cut(score["val"], false_alarm)
    return {k: float(np.mean(ood.flag(s, cut.cut, ood.constant_images(sets[k]))))
            for k, s in score.items() if k not in ("train", "val")}


def _prep(images, spec: Preprocessing, resolution: int) -> np.ndarray:
    return np.stack([preprocess_image(im, spec, resolution) for im in images])


def _noise_and_blank(rng, count: int, size: int) -> tuple[list, list]:
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    blank = [np.full((size, size), v, np.uint8) for v in np.linspace(0, 255, count).astype(int)]
    return noise, blank


def phantom_sets(work: Path, resolution: int, per_class: int):
    from orchestrator.data.dataset import prepare_dataset
    from orchestrator.data.phantoms import write_phantom
    from tasks import get_task

    brain = get_task("brain")
    raw_root = write_phantom(brain, work / "brain", per_class=per_class, seed=1)
    data = prepare_dataset(brain, raw_root, resolution, log=lambda _: None,
                           manifest_dir=work / "manifest")
    spec = brain.preprocessing
    sets = {s: data.arrays(s)[0] for s in ("train", "val", "test")}
    test_raw = [decode_image(p) for p in data.paths("test")]
    skin_root = write_phantom(get_task("skin"), work / "skin", per_class=20, seed=1)
    skin = [decode_image(p) for p in sorted(skin_root.rglob("*.jpg"))][:200]
    notumor = [decode_image(p) for p in sorted(raw_root.rglob("*.jpg")) if "notumor" in str(p)]
    rng = np.random.default_rng(0)
    noise, blank = _noise_and_blank(rng, 100, 128)
    shifted = {"skin phantom (another task)": skin, "no-tumour phantom (unseen class)": notumor,
               "uniform noise": noise, "blank": blank,
               "inverted": [255 - im for im in test_raw],
               "blurred (Gaussian, sigma 8 px)": [cv2.GaussianBlur(im, (0, 0), 8)
                                                  for im in test_raw]}
    sets.update({k: _prep(v, spec, resolution) for k, v in shifted.items()})
    return sets, data.labels("train"), len(brain.classes), data.labels("test"), "test (brain)"


def digit_sets(resolution: int):
    import real_images

    images, labels = real_images.digits()
    order = np.random.default_rng(0).permutation(len(images))
    parts = np.split(order, [int(0.6 * len(order)), int(0.8 * len(order))])
    spec = Preprocessing(grayscale=True, clahe=False)
    x = _prep(images, spec, resolution)
    sets = {k: x[p] for k, p in zip(("train", "val", "test"), parts)}
    rng = np.random.default_rng(0)
    noise, blank = _noise_and_blank(rng, 200, 64)
    windows = real_images.windows()
    pick = rng.choice(len(windows), size=min(400, len(windows)), replace=False)
    shifted = {"photograph windows (scikit-image, scikit-learn)": [windows[i] for i in pick],
               "uniform noise": noise, "blank": blank,
               "inverted": [255 - images[i] for i in parts[2]]}
    sets.update({k: _prep(v, spec, resolution) for k, v in shifted.items()})
    return sets, labels[parts[0]], 10, labels[parts[2]], "test (digits)"


def run(name: str, made, epochs: int, false_alarm: float) -> dict:
    sets, y_train, classes, y_test, test_name = made
    started = time.perf_counter()
    model = train(sets["train"], y_train, classes, epochs)
    accuracy = float(np.mean(model.predict(sets["test"].astype(np.float32), verbose=0)
                             .argmax(axis=1) == y_test))
    print(f"\n{name}: train {len(sets['train'])}, val {len(sets['val'])} (the cut), "
          f"test {len(sets['test'])}; test accuracy {accuracy:.3f}; false-alarm rate "
          f"{false_alarm}")
    found = {layer: shares(model, layer, y_train, sets, false_alarm) for layer in LAYERS}
    width = max(len(k) for k in found[LAYERS[0]]) + 2
    print(f"  {'share flagged':<{width}}" + "".join(f"{layer:>12}" for layer in LAYERS))
    for key in found[LAYERS[0]]:
        label = test_name if key == "test" else key
        print(f"  {label + ' (' + str(len(sets[key])) + ')':<{width}}"
              + "".join(f"{found[layer][key]:>12.3f}" for layer in LAYERS))
    print(f"  ({time.perf_counter() - started:.0f} s)")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--false-alarm", type=float, default=ood.DEFAULT_FALSE_ALARM)
    p.add_argument("--per-class", type=int, default=80, help="brain phantom images per class")
    p.add_argument("--resolution", type=int, default=48)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsweep-ood-bench-") as tmp:
        run("brain phantom (3 classes)",
            phantom_sets(Path(tmp), args.resolution, args.per_class), args.epochs,
            args.false_alarm)
    run("scikit-learn digits (real, 10 classes)", digit_sets(args.resolution), args.epochs,
        args.false_alarm)
    print(f"\nclearly foreign sets should reach {FOREIGN_FLOOR} flagged; the test split should "
          f"sit near the false-alarm rate")


if __name__ == "__main__":
    main()
