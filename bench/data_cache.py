"""Benchmark of the image cache: fingerprint, cold decode+preprocess+write, cached load.

    .venv/bin/python bench/data_cache.py [--per-class 500] [--resolution 224]

Writes the `brain/4class` phantom (4 x per-class JPEGs at 256 px) into a temp dir, points
MEDSWEEP_CACHE at a fresh temp dir, and times each stage once. Everything is deleted afterwards.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.data.cache import load_or_build  # noqa: E402
from orchestrator.data.phantoms import write_phantom  # noqa: E402
from orchestrator.data.splits import content_fingerprint  # noqa: E402
from orchestrator.data.table import IMAGE_EXTENSIONS  # noqa: E402
from tasks import get_task  # noqa: E402

TOUCH_CHUNK = 256  # images summed at a time when touching every cached byte


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def best_of(repeat: int, fn):
    """Fastest of `repeat` runs of fn(i): the machine is shared, the minimum is the signal."""
    runs = [timed(lambda: fn(i)) for i in range(repeat)]
    return runs[-1][0], min(seconds for _, seconds in runs)


def cold_build(paths, spec, res, fp, workers, i):
    """A build under a key of its own (a fresh cache each time); the array is deleted after."""
    cached = load_or_build(paths, spec, res, f"{fp}-cold{workers}-{i}", workers=workers,
                           log=lambda _: None)
    assert not cached.hit and cached.ok.all()
    shutil.rmtree(cached.directory)


def touch_all(images: np.ndarray) -> int:
    """Read every byte of the memmap (a sum per chunk), as a training epoch would."""
    return sum(int(images[s:s + TOUCH_CHUNK].sum(dtype=np.uint64))
               for s in range(0, len(images), TOUCH_CHUNK))


def evict(path: Path) -> None:
    """Drop a file's pages from the OS cache (no root needed for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per stage")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on a shared machine
    task = get_task("brain/4class")
    quiet = lambda _: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="medsweep-bench-") as tmp:
        os.environ["MEDSWEEP_CACHE"] = str(Path(tmp) / "cache")
        _, t_gen = timed(lambda: write_phantom(task, Path(tmp) / "data", args.per_class,
                                               seed=0, size=256))
        paths = sorted(str(p) for p in (Path(tmp) / "data").rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        n = len(paths)
        megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
        fp, t_fp = best_of(args.repeat, lambda _: content_fingerprint(paths))
        res, spec, workers = args.resolution, task.preprocessing, os.cpu_count()
        _, t_cold1 = best_of(args.repeat, lambda i: cold_build(paths, spec, res, fp, 1, i))
        _, t_cold = best_of(args.repeat, lambda i: cold_build(paths, spec, res, fp, workers, i))
        load_or_build(paths, spec, res, fp, log=quiet)
        hit, t_hit = best_of(args.repeat, lambda _: load_or_build(paths, spec, res, fp, log=quiet))
        _, t_warm = best_of(args.repeat, lambda _: touch_all(hit.images))
        assert hit.hit
        array = hit.directory / "images.npy"
        del hit  # pages still mapped by this process cannot be evicted

        def evicted_load(_):
            evict(array)
            return touch_all(load_or_build(paths, spec, res, fp, log=quiet).images)

        _, t_evicted = best_of(args.repeat, evicted_load)
        cache_mb = array.stat().st_size / 1e6
    rows = [
        ("write phantom (JPEG, 256 px)", t_gen, n / t_gen),
        (f"content fingerprint ({megabytes:.0f} MB)", t_fp, n / t_fp),
        ("cold decode+preprocess+write, 1 thread", t_cold1, n / t_cold1),
        (f"cold decode+preprocess+write, {workers} threads", t_cold, n / t_cold),
        ("cache hit: open (np.load mmap)", t_hit, n / t_hit),
        (f"cached load, page cache warm ({cache_mb:.0f} MB)", t_warm, n / t_warm),
        ("cached load, evicted from page cache", t_evicted, n / t_evicted),
    ]
    print(f"{n} images of {task.key} ({spec.key()}) at {res} px; {workers} CPU cores, "
          f"load average before the run {load}; best of {args.repeat}")
    print(f"{'stage':48} {'seconds':>8} {'images/s':>10}")
    for name, seconds, rate in rows:
        print(f"{name:48} {seconds:8.3f} {rate:10.0f}")
    print("command:", shlex.join([".venv/bin/python", "bench/data_cache.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
