#!/usr/bin/env bash
# The long background runs behind docs/results/convergence.md and precision_and_ema.md, one thread each,
# from the repository this script sits in (use a worktree at a fixed commit: git worktree add ../exp <commit>).
# Every run resumes where it stopped when started again; finished runs are skipped.
#
#   bash scripts/long_runs.sh convergence <experiment> <model.name> <name>   # 1000 rounds, seed 0, bf16, EMA
#   bash scripts/long_runs.sh health <experiment> <precision>                # quick schedule, seeds 0 1 2
#
# RUNS (default: runs) is where the run directories go; PYTHON (default: .venv/bin/python of this checkout).
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1

run() {   # run <dir> <overrides...>: resume a started run, skip a finished one, else start it
  local dir=$1; shift
  [ -f "$dir/summary.json" ] && return 0
  if [ -f "$dir/checkpoints/last.ckpt" ] || [ -f "$dir/checkpoints/previous.ckpt" ]; then
    "$PYTHON" -m fedgen_pl.cli train resume="$dir" trainer.progress_bar=false
  else
    "$PYTHON" -m fedgen_pl.cli train "$@" trainer.progress_bar=false output_dir="$dir"
  fi
}

case "${1:-}" in
  convergence)
    run "$RUNS/conv_$4" experiment="$2" model.name="$3" seed=0 federation.global_rounds=1000 metrics.eval_every=25 \
      trainer.precision=bf16-mixed model.ema_decay=0.99 ;;
  health)
    for seed in 0 1 2; do
      run "$RUNS/health_$3/$2_s$seed" experiment="$2" seed=$seed trainer.precision="$3" model.ema_decay=0.99
    done ;;
  *)
    sed -n 2,8p "$0"; exit 2 ;;
esac
