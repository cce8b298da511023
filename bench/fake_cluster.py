"""cluster.yaml's cluster, simulated on this machine: Ray's fake multi-node provider, a smoke sweep
whose trials each ask for a GPU, and a timeline of what the autoscaler did.

    .venv/bin/python bench/fake_cluster.py [--gpus-per-trial 1] [-- EXTRA SWEEP ARGS]

Writes the fake_multinode config derived from cluster.yaml (`orchestrator.fake_cluster`), starts
its head (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`: Ray's autoscaler runs in
the head's monitor process and starts each worker "node" as a local raylet), runs
`python -m orchestrator.sweep brain --profile smoke --address HEAD`, waits for the idle workers
to be removed, then stops every process it started: this process becomes their subreaper, so
Ray's daemons and the fake nodes stay its descendants and are ended by process id (never `ray
stop`, which ends every Ray on the machine, other users' too). Prints the timeline.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.fake_cluster import FakeScale, fake_cluster_config, node_type_of  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
PR_SET_CHILD_SUBREAPER = 36
SCALE = FakeScale()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def use_own_token(work: Path) -> None:
    """Token authentication as on the AWS cluster (cluster.yaml), with a token of this run's own
    in `work` for the head, every fake node, this process and the sweep (all inherit the
    environment). Ray >= 2.52 also turns token mode on by itself whenever ~/.ray/auth_token
    exists, so an explicit mode keeps the run independent of that file."""
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))


def start_head(config: dict, temp_dir: Path) -> None:
    """`ray start --head` with the autoscaler on the fake provider; the head's resources and
    label are its node type's. Its own folder and ports: nothing shared with another Ray here."""
    head = config["available_node_types"][config["head_node_type"]]
    r = head["resources"]
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [RAY, "start", "--head", f"--port={config['provider']['gcs_address'].rsplit(':', 1)[1]}",
         f"--autoscaling-config={temp_dir.parent / 'fake-cluster.yaml'}", f"--temp-dir={temp_dir}",
         f"--num-cpus={r['CPU']}", f"--num-gpus={r['GPU']}",
         f"--object-store-memory={r['object_store_memory']}",
         f"--labels={json.dumps(head['labels'])}", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false",
         "--disable-usage-stats"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"ray start --head failed:\n{done.stderr[-2000:]}")


class NodeWatch(threading.Thread):
    """Samples `ray.nodes()` every `every` s; prints and keeps each change of the live set."""

    def __init__(self, t0: float, head_type: str, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.t0, self.head_type, self.every = t0, head_type, every
        self.events: list[tuple[float, str]] = []
        self.alive: dict[str, str] = {}  # node id -> node type
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import ray

        while not self.halt.is_set():
            now = {n["NodeID"]: node_type_of(n.get("Labels", {}))
                   for n in ray.nodes() if n["Alive"]}
            t = time.time() - self.t0
            joined, left = now.items() - self.alive.items(), self.alive.items() - now.items()
            self.alive = now
            for node, kind in sorted(joined):
                self.note(t, f"+ node ..{node[-5:]} ({kind}) joined")
            for node, kind in sorted(left):
                self.note(t, f"- node ..{node[-5:]} ({kind}) left")
            if joined or left or not self.samples:
                self.samples.append((t, self.counts()))
            self.halt.wait(self.every)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.alive.values()))

    def note(self, t: float, text: str) -> None:
        self.events.append((t, text))
        print(f"  t+{t:5.0f}s  {text}; nodes now: {fmt_counts(self.counts())}", flush=True)

    def workers(self) -> int:
        return sum(1 for kind in self.alive.values() if kind != self.head_type)


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items())) or "none"


def trial_reports(storage: Path) -> list[dict]:
    """Every epoch every trial reported (Tune's result.json in the storage folder)."""
    rows = []
    for path in sorted(storage.rglob("result.json")):
        params = path.parent / "params.json"  # a fold trial's config names its finalist
        stage = ("cv" if params.exists() and "finalist" in json.loads(params.read_text())
                 else "search")
        for line in filter(str.strip, path.read_text().splitlines()):
            row = json.loads(line)
            rows.append({"trial": f"{stage} {row.get('trial_id')}", "node": row.get("node_id", "?"),
                         "time": row.get("timestamp")})
    return rows


def ensemble_nodes(work: Path) -> list[str]:
    """Where the ensemble's scoring actors ran: the node column of its scoring.csv artifact."""
    import csv

    return [row["node"] for path in work.glob("artifacts/*/artifacts/scoring.csv")
            for row in csv.DictReader(path.open())]


def autoscaler_lines(temp_dir: Path, t0: float) -> list[tuple[float, str]]:
    """The autoscaler's own decisions, from its log (monitor.log in the head's session)."""
    found = []
    log = temp_dir / "session_latest" / "logs" / "monitor.log"
    for line in log.read_text(errors="replace").splitlines():
        if ":event_summary:" in line and ("Adding" in line or "Removing" in line):
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            found.append((stamp - t0, line.split(":event_summary:", 1)[1].strip()))
    return found


def processes_left(work: Path) -> list[int]:
    """Any process on this machine whose command line names this run's folder (read only)."""
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(work) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            left.append(proc.pid)
    return left


def kill_descendants() -> int:
    """End every process this one started (and, as subreaper, inherited), by process id:
    SIGTERM, then SIGKILL for any still there after 10 s; again for any orphan adopted since."""
    import psutil  # Ray's vendored copy, on sys.path once ray is imported

    ended = set()
    for _ in range(5):
        children = psutil.Process().children(recursive=True)
        ended.update(child.pid for child in children)
        for signal_it in ("terminate", "kill"):
            for child in children:
                try:
                    getattr(child, signal_it)()
                except psutil.NoSuchProcess:
                    pass
            _, children = psutil.wait_procs(children, timeout=10)
    return len(ended)


def run_sweep(address: str, work: Path, gpus: float, extra: list[str]) -> int:
    command = [sys.executable, "-m", "orchestrator.sweep", "brain", "--profile", "smoke",
               "--address", address, "--gpus-per-trial", f"{gpus:g}",
               "--storage-path", str(work / "storage"), "--experiment", "medsweep-fake-cluster",
               "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", *extra]
    print(f"sweep: {' '.join(command[1:])}  (output: {work / 'sweep.log'})", flush=True)
    with open(work / "sweep.log", "w") as log:
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def print_report(watch: NodeWatch, work: Path, t0: float, sweep: tuple[float, float]) -> None:
    kinds = {node: kind for _, text in watch.events for node, kind in [_parse(text)]}

    def where(node: str) -> str:
        return f"..{node[-5:]} ({kinds.get(node[-5:], '?')})"

    print("\nautoscaler decisions (its log, monitor.log):")
    for t, text in autoscaler_lines(work / "ray", t0):
        print(f"  t+{t:5.0f}s  {text}")
    print("\nnode count over time (ray.nodes()):")
    for t, counts in watch.samples:
        print(f"  t+{t:5.0f}s  {fmt_counts(counts)}")
    print(f"\ntrials (Tune's result.json; the sweep ran t+{sweep[0]:.0f}s to t+{sweep[1]:.0f}s):")
    reports = trial_reports(work / "storage")
    trials: dict[str, list[dict]] = {}
    for row in reports:
        trials.setdefault(row["trial"], []).append(row)
    for trial, rows in trials.items():
        nodes = ", ".join(where(n) for n in sorted({r["node"] for r in rows}))
        times = [r["time"] - t0 for r in rows]
        print(f"  {trial}: {len(rows)} epoch(s) on {nodes}, reported t+{min(times):.0f}s.."
              f"t+{max(times):.0f}s")
    on = [kinds.get(r["node"][-5:], "?") for r in reports]
    print(f"  {len(trials)} trials, {len(reports)} epoch reports: "
          + ", ".join(f"{on.count(k)} on {k}" for k in sorted(set(on))))
    scored = ensemble_nodes(work)
    if scored:
        print(f"ensemble scoring (scoring.csv): {len(scored)} model(s) scored on "
              + ", ".join(where(n) for n in sorted(set(scored))))


def _parse(text: str) -> tuple[str, str]:
    """'+ node ..00001 (worker.gpu1) joined' -> ('00001', 'worker.gpu1')."""
    node = text.split("..", 1)[1][:5]
    return node, text.split("(", 1)[1].split(")", 1)[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus-per-trial", type=float, default=1.0)
    p.add_argument("--wait-idle", type=float, default=120.0, help="seconds to wait, after the "
                   "sweep, for the autoscaler to remove the idle workers")
    p.add_argument("extra", nargs="*", help="more sweep arguments (after --)")
    args = p.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("cannot become the subreaper of Ray's processes; not starting")
    work = Path(tempfile.mkdtemp(prefix="msfc-"))
    use_own_token(work)
    import ray
    from ray._private.services import get_node_ip_address

    address = f"{get_node_ip_address()}:{free_port()}"
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = fake_cluster_config(aws, address, SCALE)
    (work / "fake-cluster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"fake cluster config, from cluster.yaml: {work / 'fake-cluster.yaml'}")
    for name, node_type in config["available_node_types"].items():
        r, kind = node_type["resources"], node_type_of(node_type["labels"])
        on_aws = aws["available_node_types"][kind]
        print(f"  {kind:12} here {r['CPU']} CPU {r['GPU']} GPU, object store "
              f"{r['object_store_memory'] >> 20} MiB (on AWS {on_aws['resources']['CPU']} CPU "
              f"{on_aws['resources'].get('GPU', 0)} GPU, {on_aws['node_config']['InstanceType']}"
              f"); workers {node_type.get('min_workers', 0)}..{node_type['max_workers']}")
    print(f"  max_workers {config['max_workers']}, idle timeout "
          f"{config['idle_timeout_minutes'] * 60:.0f} s (on AWS {aws['idle_timeout_minutes']} min)",
          flush=True)
    t0 = time.time()
    code, span, watch = 1, (0.0, 0.0), None
    try:
        start_head(config, work / "ray")
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        watch = NodeWatch(t0, head_type=aws["head_node_type"])
        watch.start()
        print(f"head up at {address} after {time.time() - t0:.0f} s", flush=True)
        span0 = time.time() - t0
        code = run_sweep(address, work, args.gpus_per_trial, args.extra)
        span = (span0, time.time() - t0)
        print(f"  t+{span[1]:5.0f}s  sweep ended (exit {code}); waiting for idle workers to go",
              flush=True)
        deadline = time.time() + args.wait_idle
        while watch.workers() and time.time() < deadline:
            time.sleep(1)
    finally:
        if watch is not None:
            watch.halt.set()
            watch.join(timeout=10)
        ray.shutdown()
        ended = kill_descendants()
        print(f"teardown: ended {ended} process(es) this run started", flush=True)
    print_report(watch, work, t0, span)
    gone = "all removed" if not watch.workers() else f"{watch.workers()} still up at the end"
    left = processes_left(work)
    print(f"\nworkers {gone}; sweep exit {code}; processes left: {left or 'none'}; logs and "
          f"config in {work}")
    return code


if __name__ == "__main__":
    sys.exit(main())
