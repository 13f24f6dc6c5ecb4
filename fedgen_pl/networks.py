"""Generators and discriminators (METHOD.md §5.5, §5.6).

Every network is a plain ``nn.Module`` whose ``forward`` works on one batch; the federation stacks
copies with ``StackedModule`` and runs them with ``vmap``. Discriminators therefore use no BatchNorm
(per-sample independence) and return one logit per sample. Conditioning: generators take an integer
label (``num_labels = 0``: unconditional) and discriminators use a projection head
(Miyato & Koyama 2018), ``D(x, y) = psi(h(x)) + <embed(y), h(x)>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPGenerator(nn.Module):
    """z (+ one-hot label) -> MLP -> a point in R^out_dim (the Gaussian grid)."""

    def __init__(self, latent_dim: int, out_dim: int, num_labels: int = 0, hidden_dim: int = 128,
                 layers: int = 2):
        super().__init__()
        self.num_labels = num_labels
        dims = [latent_dim + num_labels] + [hidden_dim] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out), nn.ReLU()]
        blocks.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_labels:
            z = torch.cat([z, F.one_hot(labels, self.num_labels).to(z.dtype)], dim=-1)
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """x -> MLP features h -> logit, with a projection term for the label when conditional."""

    def __init__(self, in_dim: int, num_labels: int = 0, hidden_dim: int = 128, layers: int = 2):
        super().__init__()
        self.num_labels = num_labels
        dims = [in_dim] + [hidden_dim] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden_dim, 1)
        if num_labels:
            self.label_embedding = nn.Embedding(num_labels, hidden_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x)
        logit = self.head(h).squeeze(-1)
        if self.num_labels:
            logit = logit + (self.label_embedding(labels) * h).sum(-1)
        return logit


def build_generator(model_cfg, spec) -> nn.Module:
    num_labels = spec.num_labels if model_cfg.conditional else 0
    if len(spec.data_shape) == 1:
        return MLPGenerator(model_cfg.latent_dim, spec.data_shape[0], num_labels, model_cfg.hidden_dim)
    raise ValueError(f"no generator for data of shape {spec.data_shape} (model.arch={model_cfg.arch})")


def build_discriminator(model_cfg, spec) -> nn.Module:
    num_labels = spec.num_labels if model_cfg.conditional else 0
    if len(spec.data_shape) == 1:
        return MLPDiscriminator(spec.data_shape[0], num_labels, model_cfg.hidden_dim)
    raise ValueError(f"no discriminator for data of shape {spec.data_shape} (model.arch={model_cfg.arch})")
