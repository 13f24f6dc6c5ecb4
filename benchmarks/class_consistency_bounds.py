"""The range of ``global/class_consistency`` on real data, to read a generator's score against.

Pairs 2000 MNIST test digits (a) with their own inverses (255 - x: perfectly paired, the ceiling) and
(b) with unrelated inverse-MNIST test digits (no pairing, chance level), and scores both with the same
metric code and the same cached digit classifier as training does (experiment mnist_inverse_noniid).

    .venv/bin/python benchmarks/class_consistency_bounds.py
"""

import torch

from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.metrics.classifier import load_or_train
from fedgen_pl.metrics.generation import class_consistency


def main(num: int = 2000, seed: int = 0) -> None:
    cfg = load_config(["experiment=mnist_inverse_noniid"])
    datamodule = FederatedDataModule(cfg)
    datamodule.setup()
    classifier, _ = load_or_train(datamodule, cfg.metrics.cache_dir, cfg.metrics.classifier_train_samples,
                                  cfg.metrics.classifier_epochs)
    classifier.eval()
    generator = torch.Generator().manual_seed(seed)
    mnist, _ = datamodule.community_test[0]
    inverse, _ = datamodule.community_test[1]
    digits = mnist[torch.randperm(len(mnist), generator=generator)[:num]]
    unrelated = inverse[torch.randperm(len(inverse), generator=generator)[:num]]
    print(f"paired (x, 255 - x):          class_consistency {class_consistency(classifier, torch.stack([digits, 255 - digits])):.4f}")
    print(f"unpaired (x, other inverse):  class_consistency {class_consistency(classifier, torch.stack([digits, unrelated])):.4f}")


if __name__ == "__main__":
    main()
