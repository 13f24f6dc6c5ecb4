#!/usr/bin/env bash
# A new user's bad inputs, each run for real: prints the command, its exit code and what it printed on stderr
# (the last line; "LINES=n" when there were more). Every case should exit 2 with one `fedgen: ...` line.
# Usage: bash scripts/bad_input_walk.sh [work dir, default /tmp/fedgen-bad-input]   (6-17 min on 2 busy cores)
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
w=${1:-/tmp/fedgen-bad-input}
rm -rf "$w" && mkdir -p "$w" && cd "$w"
"$py" - "$w" <<'PY'
import pathlib, sys, zipfile
import numpy as np
root = pathlib.Path(sys.argv[1])
(root / "afile").write_text("mine")
(root / "notyaml.yaml").write_text("just a string\n")
(root / "bad_plugin.py").write_text("def broken(:\n")
(root / "cutrun").mkdir(); (root / "cutrun" / "config.yaml").write_text("seed: 0\n")   # stopped before a checkpoint
def npz(name, ytr, yte, shape=(8, 8), ntr=None):
    p = root / "data" / name; p.mkdir(parents=True, exist_ok=True)
    ntr = len(ytr) if ntr is None else ntr
    np.savez(p / "train.npz", x=np.zeros((ntr, *shape), np.uint8), y=np.asarray(ytr, np.int64))
    np.savez(p / "test.npz", x=np.zeros((len(yte), *shape), np.uint8), y=np.asarray(yte, np.int64))
npz("empty", [], [0, 1], ntr=0)
npz("three", [0, 1, 2], [0, 1, 2])
npz("gaps", [0, 1] * 10, [0, 1, 2]); (root / "data" / "gaps" / "classes.txt").write_text("a\nb\nc\n")
npz("onlytrain", [0, 1] * 10, [0, 1]); (root / "data" / "onlytrain" / "test.npz").unlink()
npz("odd", [0, 1] * 10, [0, 1])
with zipfile.ZipFile(root / "data" / "odd" / "train.npz", "w") as z:
    z.writestr("x.npy", b"garbage"); z.writestr("y.npy", b"garbage")
npz("truncated", [0, 1] * 10, [0, 1])
data = (root / "data" / "truncated" / "train.npz").read_bytes()
(root / "data" / "truncated" / "train.npz").write_bytes(data[: len(data) // 2])
npz("flat", [0, 1] * 10, [0, 1], shape=(5,))
(root / "data" / "emptydir").mkdir(parents=True)
(root / "data" / "gzbad").mkdir(parents=True)
for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
    (root / "data" / "gzbad" / f).write_bytes(b"PK\x03\x04 not gzip")
PY
G="experiment=gaussian_grid federation.global_rounds=2 trainer.checkpoint_every_rounds=1 trainer.progress_bar=false"
"$py" -m fedgen_pl.cli train $G output_dir="$w/run" > /dev/null 2>&1          # a finished run for eval/sample/report
cp -r "$w/run" "$w/damaged"; head -c 2000 "$w/run/checkpoints/last.ckpt" > "$w/damaged/checkpoints/last.ckpt"
rm "$w/damaged/checkpoints/previous.ckpt"
D="data.root=$w/data data.image_size=8 data.download=false federation.devices_per_community=2 data.batch_size=4"
while IFS= read -r line; do
  [ -z "$line" ] && continue
  err=$(eval "\"$py\" -m fedgen_pl.cli $line" 2>&1 >/dev/null); rc=$?
  n=$(printf '%s\n' "$err" | grep -c .)
  echo "fedgen $line"
  echo "    exit $rc$([ "$n" -gt 1 ] && echo ", LINES=$n"): $(printf '%s\n' "$err" | tail -1)"
done <<CASES
train $G output_dir=$w/afile
train $G output_dir=$w/afile/run
train $G output_dir=/dev/null
train $G output_dir=$w/run
train $G output_dir=$w/cutrun
train $G seed=abc
train $G federation.global_rounds=0
train $G federation.local_iters=1.5
train $G data.batch_size=0
train model.name=gan
train model.g_lr=-1
train trainer.precision=fp16
train 'federation.communities=[]'
train 'federation.communities=[{data: mnist, classes: [10]}]'
train 'federation.communities=[{data: mnist, classes: []}]'
train 'federation.communities=[{data:mnist,classes:[1]}]'
train 'federation.communities=[{data:mnist}]'
train 'federation.communities=[{data: mnist}]' 'federation.devices_per_community=[1, 2]'
train federation.devices_per_community=0
train experiment=nonexistent
train experiment=$w/notyaml.yaml
train 'plugins=[$w/nope.py]'
train 'plugins=[$w/bad_plugin.py]'
train resume=$w/afile
train resume=latest
train data.root=$w/afile 'federation.communities=[{data: digits}]'
train seed
train seed==3
train =3
train data.image_size=7
train metrics.num_samples=5
train metrics.kid_subset_size=abc
train logger.wandb=maybe
train clock.delay_low=5 clock.delay_high=1
train trainer.accelerator=tpu
train model.name=fed_gan metrics.anomaly_data=mnist 'metrics.anomaly_classes=[9]' 'federation.communities=[{data: mnist, classes: [0, 1]}]'
train model.name=fed_vae model.vae_average=everything
train model.name=centralized_vae model.vae_average=decoder
train model.name=fed_vae metrics.anomaly_data=mnist 'metrics.anomaly_classes=[]'
train model.name=fed_vae metrics.anomaly_data=fashion_mnist 'metrics.anomaly_classes=[0]'
train $D 'federation.communities=[{data: empty}]' output_dir=$w/r1
train $D 'federation.communities=[{data: gaps, classes: [2]}]' output_dir=$w/r2
train $D 'federation.communities=[{data: three}]' data.partition=iid federation.devices_per_community=9 output_dir=$w/r3
train $D 'federation.communities=[{data: three}]' data.partition=shards federation.devices_per_community=2 output_dir=$w/r4
train $D 'federation.communities=[{data: onlytrain}]' output_dir=$w/r5
train $D 'federation.communities=[{data: odd}]' output_dir=$w/r6
train $D 'federation.communities=[{data: truncated}]' output_dir=$w/r7
train $D 'federation.communities=[{data: flat}]' output_dir=$w/r8
train $D 'federation.communities=[{data: emptydir}]' output_dir=$w/r9
train $D 'federation.communities=[{data: gzbad}]' output_dir=$w/r10
eval $w/nonexistent
eval $w/afile
eval $w/damaged
eval $w/run metrics.foo=1
eval $w/run model.name=fed_gan
sample $w/damaged --n 3
sample $w/run --n 0
sample $w/run --n abc
sample $w/run --out $w/afile/s
sample $w/run --bogus
report $w/nonexistent
report $w/afile
report $w/data
report $w/run --out $w/afile/r.html
table --tables nope
table --splits mars
table --methods X
table --seeds a
table --out $w/afile
config --keys seed=3
trian
deploy-local experiment=gaussian_grid deploy.stream_address=nonsense
deploy-local experiment=gaussian_grid deploy.superlink_port=70000
deploy-local model.name=fed_vae
train $G model.name=centralized_gan privacy.noise_multiplier=1
train $G model.name=fed_vae model.vae_average=none privacy.target_epsilon=10
train $G privacy.clip=0.5
train $G model.name=fed_gan privacy.noise_multiplier=1 privacy.loss_bound=2
train $G privacy.noise_multiplier=1 privacy.target_epsilon=5
train $G federation.update=async privacy.target_epsilon=5
train $G privacy.target_epsilon=1e-9
train $G privacy.delta=1 privacy.noise_multiplier=1
train $G privacy.epsilon=3
CASES
