#!/usr/bin/env bash
# The command run on the GPU machine (prepared by scripts/gpu_bundle.sh; device tool: carry .gpu_bundle).
# Results go to $OUT (the device tool brings them back); a window before's checkpoints, when carried in
# .gpu_bundle/resume/, are continued.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/.gpu_bundle/site${PYTHONPATH:+:$PYTHONPATH}"
RESUME=()
[ -d .gpu_bundle/resume ] && RESUME=(--resume-from .gpu_bundle/resume)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 python3 benchmarks/gpu_suite.py --out "${OUT:-gpu_results}" --budget 450 "${RESUME[@]}"
