#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): under 8 minutes on one H100, writes
# benchmarks/results/gpu-<date>.md. `--dry-run` runs every step on the CPU at tiny sizes in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
exec "${PYTHON:-python}" "$root/benchmarks/gpu_check.py" "$@"
