#!/bin/bash
# Copy the small records of every finished run under RUNS into DEST, keeping the layout, so that a table can
# be printed again from the repository once the machine that trained its runs is gone:
#
#   bash scripts/keep_records.sh runs/vae300 docs/results/runs/vae300
#   fedgen table --tables vae ... --no-train --out docs/results/runs/vae300
#
# Per run (a directory with summary.json): summary.json, config.yaml, metrics.csv, when a later `fedgen eval`
# added scores checkpoints/metrics.json, and the global generator's final samples that `fedgen table` sets
# side by side (plots/samples_global.png, or plots/global_samples.png on the Gaussian grid; 60-100 KB).
# Checkpoints and the other plots stay behind.
# A record already in DEST is left as it is when equal and refused when it differs: nothing is overwritten.
set -euo pipefail
if [ $# -ne 2 ] || [ ! -d "$1" ]; then
    echo "fedgen: runs directory (RUNS): usage: bash scripts/keep_records.sh RUNS DEST, RUNS an existing directory" >&2
    exit 2
fi
src=${1%/}
dest=${2%/}
files=(summary.json config.yaml metrics.csv checkpoints/metrics.json plots/samples_global.png plots/global_samples.png)

mapfile -t runs < <(find "$src" -name summary.json -printf '%h\n' | sort)
if [ ${#runs[@]} -eq 0 ]; then
    echo "fedgen: finished runs ($src): no summary.json below it; point RUNS at a table's --out" >&2
    exit 2
fi
# Check every record first, so that a conflict stops the copy before anything is written.
for run in "${runs[@]}"; do
    rel=${run#"$src"}
    for f in "${files[@]}"; do
        if [ -f "$run/$f" ] && [ -e "$dest$rel/$f" ] && ! cmp -s "$run/$f" "$dest$rel/$f"; then
            echo "fedgen: record ($dest$rel/$f): differs from $run/$f; remove it or choose another DEST" >&2
            exit 2
        fi
    done
done
copied=0
for run in "${runs[@]}"; do
    rel=${run#"$src"}
    for f in "${files[@]}"; do
        if [ -f "$run/$f" ] && [ ! -e "$dest$rel/$f" ]; then
            mkdir -p "$(dirname "$dest$rel/$f")"
            cp "$run/$f" "$dest$rel/$f"
            copied=$((copied + 1))
        fi
    done
done
echo "kept the records of ${#runs[@]} finished runs in $dest ($copied files copied)"
