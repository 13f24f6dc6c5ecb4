#!/usr/bin/env bash
# The behaviour check of a refactor (issue 28): run a fixed set of configurations at one thread and keep
# each run's metrics.csv (and summary.json without its timings) under OUT/<name>/. Run it before and after
# a change, then `diff -r -x "*.log" before after`: any difference is a change of behaviour (the logs keep
# timings and are for reading).
# Usage: [EXTRA="key=value ..."] scripts/behaviour_snapshot.sh OUT [NAME ...]   (default: every configuration;
# about 25 min). EXTRA adds overrides to every run (e.g. trainer.precision=bf16-mixed). To compare two commits,
# run it from each one's worktree (cd there; PYTHON=<checkout>/.venv/bin/python): `python -m` takes the package
# from the current directory.
set -eu
out=$1; shift
python=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
tiny="federation.global_rounds=4 metrics.eval_every=2 metrics.num_samples=200 trainer.checkpoint_every_rounds=2"
declare -A runs=(
  [gaussian_grid]="experiment=gaussian_grid seed=0"
  [mnist_fmnist_noniid_r20]="experiment=mnist_fmnist_noniid federation.global_rounds=20"
  [fr_async]="experiment=mnist_fmnist_noniid_async $tiny"
  [fr_skip_community]="experiment=mnist_fmnist_noniid federation.fake_labels=community model.unheld_label_fakes=skip $tiny"
  [centralized_gan]="experiment=mnist_fmnist_noniid model.name=centralized_gan $tiny"
  [md_gan]="experiment=mnist_fmnist_noniid model.name=md_gan $tiny"
  [fed_gan]="experiment=mnist_fmnist_noniid model.name=fed_gan federation.fedavg_via_edges=true $tiny"
  [fedgen_lr]="experiment=mnist_inverse_noniid $tiny"
  [reg_cgan]="experiment=mnist_inverse_noniid model.name=reg_cgan $tiny"
  [fed_cgan]="experiment=mnist_inverse_noniid model.name=fed_cgan $tiny"
  [fed_vae]="experiment=mnist_fmnist_noniid model.name=fed_vae $tiny"
  [fed_vae_decoder]="experiment=mnist_fmnist_noniid model.name=fed_vae model.vae_average=decoder $tiny"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(gaussian_grid mnist_fmnist_noniid_r20 fr_async fr_skip_community \
  centralized_gan md_gan fed_gan fedgen_lr reg_cgan fed_cgan fed_vae fed_vae_decoder)
mkdir -p "$out"
for name in "${names[@]}"; do
  run=$(mktemp -d)/run
  $python -m fedgen_pl.cli train ${runs[$name]} ${EXTRA:-} trainer.progress_bar=false output_dir="$run" > "$out/$name.log" 2>&1
  mkdir -p "$out/$name"
  cp "$run/metrics.csv" "$out/$name/"
  $python - "$run/summary.json" > "$out/$name/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
for key in ("wall_time_s", "cpu_seconds", "run_wall_time_s", "run_cpu_seconds", "eval_seconds", "metrics_setup_seconds",
            "run_dir", "classifier", "trained", "finished"):
    summary.pop(key, None)
print(json.dumps(summary, indent=1, sort_keys=True))
PY
  echo "$name done"
done
