"""bench/gpu_check.sh: its dry run (the GPU script's code paths on CPU at tiny sizes) prints one
table with every check; and the pure helper that says whether two trials ran side by side."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import overlap_seconds  # noqa: E402  (bench/gpu_check.py)

ROWS = ("mixed-precision trial", "two trials sharing a device", "one trial on 1 vs 2 devices",
        "TTA batched (tta_predict_each)",
        "TTA per-augmentation loop", "TTA per-image predict", "input pipeline alone (no model)",
        "training fed by the input pipeline", "training fed synthetic input")


def test_overlap_is_the_time_all_trials_ran_at_once():
    assert overlap_seconds([(0.0, 10.0), (4.0, 20.0)]) == 6.0
    assert overlap_seconds([(0.0, 10.0), (12.0, 20.0)]) == 0.0  # one after the other
    assert overlap_seconds([(0.0, 10.0)]) == 0.0  # one trial is never "side by side"


@pytest.mark.slow
def test_dry_run_prints_one_table_with_every_check(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("check ")]
    assert len(header) == 1, "exactly one table"
    table = [[cell.strip() for cell in line.split(" | ")] for line in lines[header[0] + 2:]]
    assert [row[0] for row in table] == list(ROWS)
    status = {row[0]: row[3] for row in table}
    assert all(status[name] == "ok" for name in ROWS if name != ROWS[7]), status
    assert status[ROWS[7]] in ("ok", "input-bound")  # a finding, not a failure
    figures = {row[0]: row[2] for row in table}
    assert "float32" in table[0][1]  # a dry run never asks for mixed precision on CPU
    side_by_side = float(re.match(r"([\d.]+) s side by side", figures[ROWS[1]]).group(1))
    assert side_by_side > 0
    epoch = re.match(r"epoch ([\d.]+) s on 1 CPU slot, ([\d.]+) s on 2: x", figures[ROWS[2]])
    assert epoch and float(epoch.group(1)) > 0 and float(epoch.group(2)) > 0, figures[ROWS[2]]
    for name in ROWS[3:]:
        assert float(re.match(r"([\d.]+) images/s", figures[name]).group(1)) > 0
