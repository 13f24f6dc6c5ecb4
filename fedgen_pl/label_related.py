"""The label-related scenario's parts (docs/method.md §7): communities share the classes but not the
domain (MNIST / inverse MNIST), and the global generator must draw the same class in every domain from
the same latent vector.

- G_k(z, c_k) and D_kj(x | c_k) are conditional on the one-hot domain code c_k of community k only; no
  class label is given, so z must carry the class.
- The cloud's domain classifier C is trained ``classifier_steps`` per round on {(G(z, c_k), k)} and sent
  down, frozen, with G.
- Every edge adds lambda_inv * L_inv + lambda_spe * L_spe to its generator loss at every local step but
  the very first of training: L_inv = sum over domain pairs of the batch-mean L2 distance between
  first-layer outputs G1(z, c_k) and G1(z, c_k') for the same z; L_spe = sum_k CE(C(G(z, c_k)), k).

The engine (gan.py) composes these with domain conditioning (networks.py) as the recipes say
(recipes.py): fedgen_lr uses L_inv, L_spe and C; reg_cgan only L_inv; fed_cgan neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fedgen_pl.networks import DomainClassifier

__all__ = ["DomainClassifier", "invariance_loss", "paired_inputs", "edge_regulariser", "train_domain_classifier"]


def invariance_loss(first_layer: Tensor) -> Tensor:
    """L_inv from first-layer outputs ``[..., D, B, F]`` (D domains, same z across them): the sum over
    unordered domain pairs of the batch-mean (unsquared) L2 distance. Returns shape ``[...]``."""
    num_domains = first_layer.shape[-3]
    total = first_layer.new_zeros(first_layer.shape[:-3])
    for a in range(num_domains):
        for b in range(a + 1, num_domains):
            total = total + (first_layer[..., a, :, :] - first_layer[..., b, :, :]).norm(dim=-1).mean(-1)
    return total


def paired_inputs(model, batch: int, leading: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """The same z for every domain: z ``[*leading, K*batch, d]`` and domain codes ``[*leading, K*batch]``,
    drawn from the model's training stream."""
    K, rng = model.num_communities, model.generator_rng()
    z = torch.randn(*leading, 1, batch, model.cfg.model.latent_dim, generator=rng, device=model.device)
    z = z.expand(*leading, K, batch, -1).reshape(*leading, K * batch, -1)
    codes = torch.arange(K, device=model.device).repeat_interleave(batch).expand(*leading, K * batch)
    return z, codes


def edge_regulariser(model, updating: Tensor) -> Tensor | None:
    """lambda_inv * L_inv + lambda_spe * L_spe of every updating edge generator, summed (the terms the
    model's recipe names; None when their weights are 0)."""
    m, parts = model.cfg.model, model.recipe.regulariser
    lambda_inv = float(m.lambda_inv) if "inv" in parts else 0.0
    lambda_spe = float(m.lambda_spe) if "spe" in parts else 0.0
    if lambda_inv == 0 and lambda_spe == 0:
        return None
    G, K, B = model.num_generators, model.num_communities, m.regularizer_batch
    z, codes = paired_inputs(model, B, leading=(G,))      # one draw per edge generator, all K domains
    per_edge = torch.zeros(G, device=model.device)
    if lambda_inv:
        first = model.community_generators(z, codes, first_layer=True)      # [G, K*B, F]
        per_edge = per_edge + lambda_inv * invariance_loss(first.view(G, K, B, -1))
    if lambda_spe:
        images = model.community_generators(z, codes)                      # [G, K*B, C, H, W]
        classifier = model.domain_classifier
        params = {name: p.detach() for name, p in classifier.named_parameters()}   # C is frozen at the edges
        logits = functional_call(classifier, params, (images.flatten(0, 1),))
        ce = F.cross_entropy(logits, codes.flatten(), reduction="none").view(G, K, B)
        per_edge = per_edge + lambda_spe * ce.mean(-1).sum(-1)
    return (per_edge * updating.to(per_edge.dtype)).sum()


def train_domain_classifier(model) -> list[float]:
    """The cloud's round-end step: ``classifier_steps`` cross-entropy steps of C on {(G(z, c_k), k)};
    returns the losses. C then goes down, frozen, with G."""
    if model._trainer is not None:
        opt_c = model.optimizers()[2]
    else:                                          # outside a Trainer (tests): one optimiser kept on the model
        if not hasattr(model, "_opt_c"):
            model._opt_c = model.configure_optimizers()[2]
        opt_c = model._opt_c
    losses = []
    with torch.enable_grad():
        for _ in range(model.cfg.model.classifier_steps):
            z, codes = paired_inputs(model, model.cfg.model.regularizer_batch)
            with torch.no_grad():
                images = model.global_generator(z, codes)
            loss = F.cross_entropy(model.domain_classifier(images), codes)
            opt_c.zero_grad(set_to_none=True)
            model.backprop(loss)
            opt_c.step()
            losses.append(loss.detach())
    return [float(v) for v in losses]
