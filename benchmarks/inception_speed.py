"""Inception (TF-FID InceptionV3), two ways of running it on the same images (default: fp32 against bf16
autocast, both channels-last): seconds per 10,000 images and the FID of each, measured in one run.

    .venv/bin/python benchmarks/inception_speed.py                  # 1000 MNIST test vs 1000 noisy train images
    .venv/bin/python benchmarks/inception_speed.py --n 2000 --fake runs/<run>/checkpoints/samples_2000.npz
    .venv/bin/python benchmarks/inception_speed.py --variants bf16-published bf16   # what removing contiguous gains
    .venv/bin/python benchmarks/inception_speed.py --variants 32-published 32       # what channels-last gains at fp32
    .venv/bin/python benchmarks/inception_speed.py --variants bf16 bf16 --chunks 100 4   # images per call on CPU

The second set is a run's exported samples (``fedgen sample RUN --n N``) or, by default, MNIST training
digits with Gaussian noise (sigma 0.3), a set whose FID is in the range the tables report. The bar for
``metrics.inception_precision=bf16``: its FID within 1% of fp32's. ``bf16-published`` is bf16 on the
published graph, with its ``contiguous`` calls (``fedgen_pl.metrics.inception.without_contiguous``);
``32-published`` is fp32 on the published graph in its own NCHW layout (the metrics' fp32 path before it
moved to channels-last)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.sources import load_source  # noqa: E402
from fedgen_pl.config import load_config  # noqa: E402
from fedgen_pl.metrics.generation import INCEPTION_CHUNK, Precomputed, inception_features  # noqa: E402
from fedgen_pl.metrics.inception import inception_weights_file, load_inception  # noqa: E402


def network_of(variant: str) -> torch.nn.Module:
    if not variant.endswith("-published"):
        return load_inception(variant)
    precision = variant.removesuffix("-published")
    network = load_inception(precision)
    published = torch.jit.load(str(inception_weights_file()), map_location="cpu").eval()
    # bf16-published: channels-last with the graph's contiguous calls; 32-published: the graph as shipped (NCHW)
    network.network = published.to(memory_format=torch.channels_last) if precision == "bf16" else published
    return network


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FrechetInceptionDistance(feature=Precomputed(2048))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--fake", type=Path, help="an .npz of uint8 samples (x: [n, C, H, W]) from fedgen sample")
    parser.add_argument("--variants", nargs=2, default=["32", "bf16"], choices=["32", "bf16", "bf16-published", "32-published"],
                        help="the two networks to compare (default: 32 bf16)")
    parser.add_argument("--chunks", nargs=2, type=int, help="images per Inception call for each of the two "
                        "(default: the CPU's INCEPTION_CHUNK for both)")
    args = parser.parse_args()
    print(f"# inception_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    mnist = load_source(load_config(["experiment=prism_mnist"]), "mnist")
    gen = torch.Generator().manual_seed(0)
    real = mnist.test_x[torch.randperm(len(mnist.test_x), generator=gen)[:args.n]]
    if args.fake:
        fake = torch.from_numpy(np.load(args.fake)["x"][:args.n])
        what = str(args.fake)
    else:
        train = mnist.train_x[torch.randperm(len(mnist.train_x), generator=gen)[:args.n]].float() / 127.5 - 1
        fake = (train + 0.3 * torch.randn(train.shape, generator=gen)).clamp(-1, 1)
        what = "MNIST train digits + N(0, 0.3^2) noise"
    print(f"real: {len(real)} MNIST test images; generated: {len(fake)} ({what})")
    results = {}
    for precision, chunk in zip(args.variants, args.chunks or [None, None]):
        network = network_of(precision)
        if chunk:
            INCEPTION_CHUNK["cpu"] = chunk
            precision = f"{precision}, {chunk} per call"
        inception_features(network, real[:10])                     # warm-up
        started = time.perf_counter()
        features = inception_features(network, torch.cat([real, fake.to(real.dtype) if fake.dtype == real.dtype
                                                          else ((fake + 1) * 127.5).round().to(torch.uint8)]))
        seconds = time.perf_counter() - started
        per_10k = seconds / len(features) * 10_000
        results[precision] = (per_10k, fid(features[:len(real)], features[len(real):]), features)
        print(f"{precision:>14}: {per_10k:7.0f} s per 10,000 images, FID {results[precision][1]:.3f}")
    (base, (t0, f0, x0)), (new, (t1, f1, x1)) = results.items()
    print(f"{new} / {base}: speed-up {t0 / t1:.2f}x, FID difference {100 * (f1 - f0) / f0:+.3f}%, "
          f"features {'bitwise equal' if torch.equal(x0, x1) else 'differ'}")


if __name__ == "__main__":
    main()
