"""The floor of the image metrics: what a perfect generator scores, one that answers every request with a real
training image of the requested label (drawn without replacement) instead of a sample.

The images go through the experiment's own evaluator (`fedgen_pl.metrics.evaluator.build_evaluator`: the same
classifier, Inception network, reference set, sample counts and seeds as a run's final evaluation), so the
numbers are what `fid_inception`, `kid_inception`, `fid_classifier` and `acc` can reach at best in this
pipeline: the Inception FID between two independent sets of 10,000 real images (training split against the
test split) is not 0. A published FID below the floor of the same protocol would not be reachable here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_data_floor.py prism_mnist prism_fmnist [schedule=full ...]

Prints one Markdown row per experiment. Costs the Inception features of 10,000 images per experiment (about
5 min at one thread on the 2-core Intel Xeon); the reference set's are cached.
"""

from __future__ import annotations

import sys
import time

import torch

from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.metrics.evaluator import build_evaluator
from fedgen_pl.images import normalise_images

ROWS = ("global/fid_inception", "global/kid_inception", "global/fid_classifier", "global/acc")


def real_image_sampler(datamodule, seed: int = 0):
    """A stand-in for ``sample_global``: for each (label, domain) it returns an unused training image of that
    global label from the domain's dataset, in the generator's range [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    pools: dict[tuple[str, int], list[int]] = {}
    for name, source in datamodule.sources.items():
        labels = datamodule.lookups[name][source.train_y]
        for label in labels.unique().tolist():
            index = (labels == label).nonzero().flatten()
            pools[(name, label)] = index[torch.randperm(len(index), generator=generator)].tolist()

    def sample(labels: torch.Tensor, _generator, domains: torch.Tensor) -> torch.Tensor:
        picked = []
        for label, domain in zip(labels.tolist(), domains.tolist()):
            name = datamodule.community_data[domain]
            pool = pools[(name, label)]
            if not pool:
                raise RuntimeError(f"fedgen: not enough training images of label {label} in {name} for the floor")
            picked.append(datamodule.sources[name].train_x[pool.pop()])
        return normalise_images(torch.stack(picked).to(labels.device))

    return sample


def floor(overrides: list[str]) -> dict[str, float]:
    cfg = load_config(overrides)
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    if len(datamodule.spec.data_shape) == 1:
        print(f"fedgen: not an image experiment (experiment {cfg.experiment}): name an image experiment, e.g. "
              f"prism_mnist", file=sys.stderr)
        sys.exit(2)
    evaluator = build_evaluator(cfg, datamodule, torch.device("cpu"))
    return evaluator.evaluate(real_image_sampler(datamodule, int(cfg.seed)), ["global"], inception=True)


def main(argv: list[str]) -> None:
    experiments = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if not any(a.startswith("schedule=") for a in overrides):
        overrides.insert(0, "schedule=full")      # the tables' metric settings (10,000 Inception samples)
    print(f"Overrides: `{' '.join(overrides)}`; {torch.get_num_threads()} thread(s).\n")
    print("| experiment | " + " | ".join(f"`{r.split('/')[-1]}`" for r in ROWS) + " | seconds |")
    print("|---|" + "---|" * (len(ROWS) + 1))
    for experiment in experiments:
        started = time.time()
        metrics = floor([f"experiment={experiment}", "metrics.inception=true", *overrides])
        cells = [f"{metrics[r]:.4f}" if "kid" in r else f"{100 * metrics[r]:.2f}%" if r.endswith("acc")
                 else f"{metrics[r]:.2f}" for r in ROWS]
        print(f"| {experiment} | " + " | ".join(cells) + f" | {time.time() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
