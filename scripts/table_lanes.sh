#!/usr/bin/env bash
# Train a queue of table cells in background lanes over days: each cell is one `fedgen table` call for one
# run, one thread per lane, from a worktree at the cell's commit (made when missing: $WORKTREES/fedgen-<commit>,
# WORKTREES defaulting to this checkout's parent directory).
#
#   nohup bash scripts/table_lanes.sh QUEUE [LANES] > QUEUE.out 2>&1 &      # LANES lanes, default 2
#
# QUEUE holds one cell per line (blank lines and # comments are skipped):
#   commit|table|split|column|seed|out|overrides
# commit: the checkout that trains the cell (empty: this one); out: the table's --out (relative paths are
# relative to this checkout); overrides: key=value ... for the run, e.g. trainer.precision=bf16-mixed.
# SCHEDULE (default full) is the schedule of every cell.
#
# A lane claims the next unclaimed cell (a directory in QUEUE.claims/) and trains it; its output goes to
# QUEUE.logs/<cell>.log, and QUEUE.out gets a line as each cell starts and ends. A finished run is skipped
# in seconds and a cut-off one resumes from its checkpoint, so after a stop (a session's end, a reboot):
#   rm -rf QUEUE.claims && nohup bash scripts/table_lanes.sh QUEUE > QUEUE.out 2>&1 &
# Where each run stands: fedgen table --status (same --tables, --splits, --seeds, --out and overrides).
set -u
QUEUE=$(realpath "${1:?usage: table_lanes.sh QUEUE [LANES]}")
LANES=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SCHEDULE=${SCHEDULE:-full}
CLAIMS="$QUEUE.claims"
LOGS="$QUEUE.logs"
[ -f "$QUEUE" ] || { echo "fedgen: not a file (QUEUE $QUEUE): give the queue's path" >&2; exit 2; }
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || { echo "fedgen: must be a positive integer (LANES $LANES): e.g. 2" >&2; exit 2; }
mkdir -p "$CLAIMS" "$LOGS"

checkout_of() {   # the checkout that trains a cell: this one, or a worktree at its commit (made once)
  local commit=$1 tree
  [ -z "$commit" ] && { echo "$ROOT"; return; }
  tree=$(realpath -m "${WORKTREES:-$ROOT/..}/fedgen-$commit")
  (
    flock 9                                             # two lanes must not add the same worktree
    [ -d "$tree" ] || git -C "$ROOT" worktree add --detach -q "$tree" "$commit" >&2
  ) 9> "$CLAIMS/.worktree.lock"
  echo "$tree"
}

lane() {
  local commit table split column seed out overrides key tree rc
  while IFS='|' read -r commit table split column seed out overrides; do
    [[ -z "$table" || "$commit" == \#* ]] && continue
    key=$(echo "$table-$split-$column-$seed-$(echo "$out $overrides" | md5sum | cut -c1-8)" | tr ' ./' '___')
    mkdir "$CLAIMS/$key" 2>/dev/null || continue
    [[ "$out" == /* ]] || out="$ROOT/$out"
    tree=$(checkout_of "$commit") || { echo "[$(date +%H:%M:%S)] lane $1: no checkout at '$commit' for $key"; continue; }
    echo "[$(date +%H:%M:%S)] lane $1: start $key (${commit:-this checkout})"
    # shellcheck disable=SC2086   # overrides are separate words
    (cd "$tree" && PYTHONPATH="$tree" OMP_NUM_THREADS=1 nice -n 5 "$PYTHON" -m fedgen_pl.cli table \
        --tables "$table" --splits "$split" --methods "$column" --seeds "$seed" --schedule "$SCHEDULE" --jobs 1 \
        --out "$out" $overrides >> "$LOGS/$key.log" 2>&1)
    rc=$?
    echo "[$(date +%H:%M:%S)] lane $1: done $key (exit $rc)"
  done < "$QUEUE"
}

for n in $(seq "$LANES"); do
  lane "$n" &
  sleep 1
done
wait
