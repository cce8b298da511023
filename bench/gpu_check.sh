#!/usr/bin/env bash
# The GPU paths in one command, one table (bench/gpu_check.py says what each check runs):
#   bench/gpu_check.sh              on a GPU machine, no network, about 5-8 minutes
#   bench/gpu_check.sh --dry-run    the same code paths on CPU at tiny sizes
# Runs from any directory; PYTHON overrides the interpreter (default: the project's .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # the Ray workers import the project too
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$python" bench/gpu_check.py "$@"
