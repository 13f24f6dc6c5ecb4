"""How far a label-related run's ``class_consistency`` is from what its own digits allow.

Loads a run's last checkpoint, draws the same paired samples the metric draws (metrics.num_samples), and prints:

- ``class_consistency`` itself (the classifier agrees on G(z, c_MNIST) and G(z, c_inverse));
- the ceiling at this digit quality: the same score for each domain's samples paired with their own
  exact inverses (-x in tanh space, 255 - x in pixels), i.e. a generator whose two domains are one
  drawing negated. Real MNIST test digits score 0.99 here (``class_consistency_bounds.py``);
- the classifier's mean top softmax probability on the samples and on real test digits;
- the most frequent disagreements (class in the MNIST domain -> class in the inverse domain).

    .venv/bin/python benchmarks/class_consistency_ceiling.py runs/<run dir>
"""

import sys

import torch
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedgen_pl.evaluate import load_model
from fedgen_pl.metrics.classifier import _normalise, load_or_train
from fedgen_pl.metrics.generation import class_consistency


@torch.no_grad()
def main(run_dir: str) -> None:
    model, path = load_model(run_dir, torch.device("cpu"))
    if not hasattr(model, "paired_samples"):
        raise SystemExit(f"{path}: not a label-related (domain-conditional) run")
    if model.num_communities != 2:
        raise SystemExit(f"{path}: the ceiling pairs two domains (MNIST / inverse MNIST), this run has {model.num_communities}")
    cfg = OmegaConf.create(model.hparams.config)
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    classifier, _ = load_or_train(datamodule, cfg.metrics.cache_dir, cfg.metrics.classifier_train_samples,
                                  cfg.metrics.classifier_epochs)
    classifier.eval()
    # the metric's own draw: metrics.num_samples latent vectors from GenerationEvaluator's seed (0) + 2
    num = cfg.metrics.num_samples
    paired = model.paired_samples(num, torch.Generator().manual_seed(2))
    mnist, inverse = paired[0], paired[1]
    real = _normalise(datamodule.community_test[0][0][:num])
    top = {name: classifier(x).softmax(1).max(1).values.mean().item()
           for name, x in (("MNIST-domain samples", mnist), ("inverse-domain samples", inverse),
                           ("real MNIST test digits", real))}
    print(f"{path} (round {model.round})")
    print(f"class_consistency                          {class_consistency(classifier, paired):.4f}")
    print(f"ceiling: MNIST-domain samples vs their -x  {class_consistency(classifier, torch.stack([mnist, -mnist])):.4f}")
    print(f"ceiling: inverse-domain samples vs their -x {class_consistency(classifier, torch.stack([-inverse, inverse])):.4f}")
    print(f"mean |G(z, c_MNIST) + G(z, c_inverse)|     {(mnist + inverse).abs().mean().item():.4f}  (0 = exact negation)")
    for name, value in top.items():
        print(f"mean top softmax probability, {name}: {value:.3f}")
    a, b = classifier(mnist).argmax(1), classifier(inverse).argmax(1)
    L = model.spec.num_labels
    pairs = torch.bincount(a[a != b] * L + b[a != b], minlength=L * L)
    worst = [(int(pairs[i]), int(i) // L, int(i) % L) for i in pairs.argsort(descending=True)[:5]]
    print("most frequent disagreements (count, MNIST-domain class -> inverse-domain class):", worst)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
