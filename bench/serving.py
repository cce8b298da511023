"""Latency of the registered model served over HTTP on loopback, and where the time goes.

    make demo                       # registers medsweep-brain@candidate in mlflow/mlflow.db
    .venv/bin/python bench/serving.py [--model models:/medsweep-brain@candidate]

A real `mlflow models serve` answers base64 JPEGs (the REST contract of docs/serving.md):

1. one image per request: p50 and p95 latency over --requests requests;
2. 32-image batches: images per second over --batches requests.

Every figure includes decoding, preprocessing, TTA and every fold model of every member. Then
the same 32-image batch in this process, timed part by part (decode, preprocess, each model's
TTA, calibration and decision), gives each part's share; what the HTTP figures add on top is
JSON, base64 and the server. Images: the task's synthetic phantom, written fresh (never patient
data; the model only has to read them).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, encoded: list[str]) -> float:
    body = json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[e] for e in encoded]}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        json.loads(answer.read())
    return time.perf_counter() - start


def _serve(model_uri: str, uri: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve",
                               "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the model server stopped: {server.stderr.read().decode()[-1500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.terminate()
    sys.exit("the model server did not start within 180 s")


def _parts(model, files: list[bytes]) -> dict[str, float]:
    """One batch through the pyfunc's own steps, each timed (seconds)."""
    from orchestrator.serving import contract, inputs
    from orchestrator.tta.policies import NamedTransform
    from orchestrator.tta.predict import tta_predict

    inner = model.unwrap_python_model()
    transforms = tuple(NamedTransform(**t) for t in inner.spec["transforms"])
    times: dict[str, float] = {}
    start = time.perf_counter()
    images = inputs.decode_inputs(pd.DataFrame({inputs.IMAGE: files}))
    times["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    batches = inner.preprocessed(images)  # once per resolution, as the served model does
    times["preprocess"] = time.perf_counter() - start
    total = 0
    for i, (keras_model, resolution, weight) in enumerate(inner.members):
        start = time.perf_counter()
        total = total + weight * tta_predict(keras_model, batches[resolution], transforms)
        name = inner.spec["members"][i]["name"]
        times[f"TTA x{len(transforms)}: {name} ({resolution} px)"] = time.perf_counter() - start
    start = time.perf_counter()
    contract.answer(total, contract.ServingSpec.from_dict(inner.spec["serving"]))
    times["calibration + decision"] = time.perf_counter() - start
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models:/medsweep-brain@candidate")
    p.add_argument("--tracking-uri", default=None, help="default: the demo's store")
    p.add_argument("--requests", type=int, default=50, help="single-image requests")
    p.add_argument("--batches", type=int, default=8, help="32-image requests")
    args = p.parse_args()

    import mlflow

    from orchestrator import tracking
    from orchestrator.data.phantoms import write_phantom
    from tasks import get_task

    uri = args.tracking_uri or tracking.default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except Exception as err:
        print(f"error: cannot load {args.model} from {uri} ({str(err).splitlines()[0]}); "
              "run `make demo` first, or pass --model/--tracking-uri", file=sys.stderr)
        return 2
    spec = model.unwrap_python_model().spec
    task = get_task(spec["task"].split("/")[0])
    with tempfile.TemporaryDirectory(prefix="medsweep-serving-bench-") as tmp:
        root = write_phantom(task, Path(tmp) / "phantom", per_class=20, seed=7)
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
        files = [p.read_bytes() for p in paths]
    encoded = [base64.b64encode(f).decode() for f in files]
    models, transforms = len(spec["members"]), len(spec["transforms"])
    print(f"model {args.model}: {models} Keras model(s) (members x folds), TTA "
          f"x{transforms}; {len(files)} phantom images, mean file {np.mean([len(f) for f in files]) / 1024:.1f} KiB")

    port = _free_port()
    server = _serve(args.model, uri, port)
    try:
        for e in encoded[:3]:
            _post(port, [e])  # warm-up: first calls trace the graphs
        single = [_post(port, [encoded[i % len(encoded)]]) for i in range(args.requests)]
        batch = 32
        _post(port, encoded[:batch])
        batched = [_post(port, [encoded[(k * batch + j) % len(encoded)] for j in range(batch)])
                   for k in range(args.batches)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    p50, p95 = np.percentile(single, [50, 95]) * 1000
    rate = batch / np.median(batched)
    print("\nserved over HTTP on loopback (mlflow models serve, base64 JPEG in JSON):")
    print(pd.DataFrame([
        {"measure": "1 image per request", "figure": f"p50 {p50:.0f} ms, p95 {p95:.0f} ms",
         "requests": args.requests},
        {"measure": f"{batch}-image batches", "figure": f"{rate:.1f} images/s "
         f"({np.median(batched) * 1000:.0f} ms per request)", "requests": args.batches},
    ]).to_string(index=False))

    _parts(model, files[:batch])  # warm-up in this process
    parts = _parts(model, files[:batch])
    in_process = sum(parts.values())
    http = float(np.median(batched))
    rows = [{"part": k, "ms": v * 1000, "share": v / http} for k, v in parts.items()]
    rows.append({"part": "HTTP, JSON, base64, server", "ms": max(http - in_process, 0) * 1000,
                 "share": max(http - in_process, 0) / http})
    print(f"\nwhere a {batch}-image request's time goes (in-process parts; the rest is the "
          "server):")
    frame = pd.DataFrame(rows)
    frame["ms"] = frame["ms"].map(lambda v: f"{v:.0f}")
    frame["share"] = frame["share"].map(lambda v: f"{v:.0%}")
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
