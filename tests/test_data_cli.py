"""`python -m orchestrator.data`: synth then scan as a user runs them; errors are one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.data.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.data", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_synth_then_scan_prints_counts(tmp_path):
    out = tmp_path / "brain"
    synth = run("synth", "brain/4class", str(out), "--per-class", "5", "--size", "32",
                "--seed", "1")
    assert synth.returncode == 0, synth.stderr
    assert "wrote 20 synthetic images for task brain" in synth.stdout
    assert "SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES" in synth.stderr

    scan = run("scan", "brain/4class", str(out))
    assert scan.returncode == 0, scan.stderr
    lines = scan.stdout.splitlines()
    assert lines[0] == f"task brain/4class (brain_mri layout): 20 images under {out}"
    assert "SYNTHETIC PHANTOM DATA - NOT MEDICAL IMAGES" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:8]}
    assert rows == {"glioma": ["1", "4", "5"], "meningioma": ["1", "4", "5"],
                    "notumor": ["1", "4", "5"], "pituitary": ["1", "4", "5"],
                    "total": ["4", "16", "20"]}


def test_scan_reports_skipped_and_notes(tmp_path):
    out = tmp_path / "cx"
    assert run("synth", "pneumonia", str(out), "--per-class", "4", "--size", "32").returncode == 0
    (out / "train" / "NORMAL" / "readme.txt").write_text("x")
    scan = run("scan", "pneumonia", str(out))
    assert scan.returncode == 0, scan.stderr
    assert "note: the shipped val/ (4 images) is merged into train" in scan.stdout
    assert "skipped 1 (not an image (.txt)): " in scan.stdout


@pytest.mark.parametrize("args, message", [
    (("scan", "brian", "."), "error: unknown task 'brian'; valid tasks: brain, skin, leukemia, "
                             "pneumonia, folder"),
    (("synth", "brain/5class", "x"), "error: task 'brain' has no variant '5class'"),
    (("scan", "skin", "/no/such/folder"), "error: data folder /no/such/folder does not exist"),
])
def test_user_errors_exit_2_with_one_line(args, message, cli_in_process):
    code, out, err = cli_in_process(main, list(args), REPO)
    assert code == 2
    assert err.splitlines() == [err.strip()]
    assert err.startswith(message)
    assert "Traceback" not in err and out == ""


def test_main_in_process(tmp_path, capsys):
    assert main(["synth", "folder", str(tmp_path / "f"), "--per-class", "4", "--size", "32"]) == 0
    assert main(["scan", "folder", str(tmp_path / "f")]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["synth", "folder", str(tmp_path / "f")]) == 2  # not empty any more
    assert main(["scan", "leukemia/binary", str(tmp_path), "--variant", "4class"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("error: phantom output") and "disagree" in err[-1]
