"""Anomaly detection with the devices' VAEs (``metrics.anomaly_data`` / ``metrics.anomaly_classes``): the
AUROC of their negative ELBO (``FedVAE.anomaly_scores``) on held-out classes against normal test images.

The protocol: the anomalous classes are held out of every device's training data (the communities' class
lists leave them out), so "normal" is what the federation trains on and each device has seen only its
share of it. Each device scores test images with its own VAE (its encoder, and the shared or its own
decoder), the score being the negative ELBO (``FedVAE.anomaly_scores``), on

- normal: test images of the classes the federation trains on (``generation.reference_set``, in the
  communities' proportions);
- anomalous: test images of ``anomaly_classes`` of ``anomaly_data`` (held-out classes of a training dataset,
  or classes of a dataset no community trains on, e.g. FashionMNIST against MNIST devices),

and the metric is the AUROC of that score (torchmetrics), per device and averaged over the devices: the
probability that an anomalous image scores higher than a normal one. A local-only device that has seen two
digits flags the other normal digits too; federation should teach it the rest of normal.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from fedgen_pl.errors import ConfigError


def auroc(scores: Tensor, is_anomaly: Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more anomalous) for binary targets ``is_anomaly``:
    P(score of an anomaly > score of a normal sample), ties counting one half."""
    # torchmetrics reads scores outside [0, 1] as logits and squashes them with a sigmoid, which ties every
    # score of ~100 nats at 1.0; an order-preserving map into [0, 1] first (float64: no new ties)
    scores = scores.double()
    span = (scores.max() - scores.min()).clamp(min=torch.finfo(torch.float64).tiny)
    return float(binary_auroc((scores - scores.min()) / span, is_anomaly.long()))


def held_out_images(datamodule, data: str, classes: list[int], num_samples: int, seed: int = 0) -> Tensor:
    """The anomalies: ``num_samples`` (at most) uint8 test images of ``classes`` of the dataset ``data`` (one the
    communities train on without those classes, or another dataset, converted to the run's image size)."""
    source = datamodule.source(data)     # a community's dataset, or another one (anomalies from elsewhere)
    bad = [c for c in classes if not 0 <= c < source.num_classes]
    if bad:
        raise ConfigError(f"{bad} not in dataset '{data}' (classes 0..{source.num_classes - 1})",
                          where="metrics.anomaly_classes")
    held_out = torch.isin(source.test_y, torch.tensor(classes)).nonzero().flatten()
    generator = torch.Generator().manual_seed(seed + 1)
    return source.test_x[held_out[torch.randperm(len(held_out), generator=generator)[:num_samples]]]


@torch.no_grad()
def anomaly_metrics(model, normal: Tensor, anomalous: Tensor, label_prior: Tensor, seed: int = 0) -> dict[str, float]:
    """``device_<n>/anomaly_auroc`` for every device and ``devices/anomaly_auroc``, their mean, for images in
    [-1, 1]; ``label_prior`` weighs the labels of a class-conditional VAE (its training label counts)."""
    x = torch.cat([normal, anomalous])
    is_anomaly = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalous))])
    generator = torch.Generator(device=x.device).manual_seed(seed)
    scores = model.anomaly_scores(x, label_prior, generator).float().cpu()
    per_device = [auroc(s, is_anomaly) for s in scores]
    out = {f"device_{n}/anomaly_auroc": value for n, value in enumerate(per_device)}
    out["devices/anomaly_auroc"] = sum(per_device) / len(per_device)
    return out
