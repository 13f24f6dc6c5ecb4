"""Likelihood metrics of a VAE, as pure functions (nats per image).

An image x has grey levels in [0, 1] read as Bernoulli means (the continuous binary cross-entropy, as most
VAE code does with MNIST); the encoder gives q(z|x) = N(mu, diag(sigma^2)), the prior is N(0, I) and the
decoder gives pixel logits l(z):

    log p(x|z) = sum_pixels [ x log s(l) + (1 - x) log(1 - s(l)) ]              (s: the sigmoid)
    KL(q || p) = 1/2 sum_latent (mu^2 + sigma^2 - 1 - log sigma^2)
    -ELBO(x)   = -log p(x|z) + KL,    z = mu + sigma * eps,  eps ~ N(0, I)     (one sample, analytic KL)
    -L_K(x)    = -log (1/K sum_k w_k),  w_k = p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)

L_K is the importance-weighted bound of Burda, Grosse & Salakhutdinov (2016): E[-L_1] = -ELBO, and -L_K
falls toward -log p(x) as K grows. A mixture sum_g pi_g p_g(x) of models (the local-only VAEs' joint
model) is bounded by its members' bounds: -log p(x) <= -log sum_g pi_g exp(-b_g(x)) for bounds b_g.
A class-conditional model scores an image without its label the same way, as the mixture over labels.

With grey levels the reconstruction term never reaches 0 (the entropy of the grey levels remains), so
these numbers compare models on the same data; they are not the binarized-MNIST nats of the literature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(logits: Tensor, target: Tensor) -> Tensor:
    """log p(x|z) per sample: ``logits`` and ``target`` (in [0, 1]) ``[..., *pixels]`` -> ``[...]``, summed over
    the image's last three dimensions."""
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-3).sum(-1)


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the last dimension."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1)


def gaussian_log_density(z: Tensor, mean: Tensor | float = 0.0, log_var: Tensor | float = 0.0) -> Tensor:
    """log N(z; mean, diag(exp(log_var))), summed over the last dimension."""
    log_var = torch.as_tensor(log_var, dtype=z.dtype, device=z.device)
    return -0.5 * ((z - mean).pow(2) / log_var.exp() + log_var + LOG_2PI).sum(-1)


def iw_negative_elbo(log_weights: Tensor) -> Tensor:
    """-L_K from the log importance weights ``[K, ...]`` (K samples first): -(logsumexp_k log w_k - log K)."""
    return -(torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0]))


def mixture_bound(member_bounds: Tensor, weights: Tensor) -> Tensor:
    """-log sum_g pi_g exp(-b_g(x)): the bound of a mixture from its members' bounds ``[G, n]`` and mixing
    weights ``[G]`` (they need not sum to 1; they are normalised)."""
    log_pi = (weights / weights.sum()).log().to(member_bounds.dtype)
    return -torch.logsumexp(-member_bounds + log_pi.view(-1, *[1] * (member_bounds.dim() - 1)), dim=0)
