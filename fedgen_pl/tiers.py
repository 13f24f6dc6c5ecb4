"""The device-side and edge-side maths of one local iteration (method §2), as pure functions over
tensors: what a device computes from its discriminator's logits, and what an edge does with the
feedback. ``device_iteration`` is the whole of a device's side: the in-process engine
(``FederatedGAN.local_update``) calls it batched over the devices that report, the Flower ClientApp for its
one device, so the two cannot drift apart. Rows are devices (``[n, B]``
logits: n devices, B samples each).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Per row ``[n, B] -> [n]``: the mean, or with 0/1 ``weights`` the mean over the kept samples (0
    for a row that keeps none)."""
    if weights is None:
        return values.mean(1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, judged: Tensor | None = None) -> Tensor:
    """Per device, the loss D_kj minimises: ``softplus(-D(x)) + softplus(D(G(z_d)))`` (batch means), i.e.
    -(E[log D(x)] + E[log(1 - D(G(z_d)))]); fakes outside ``judged`` are left out (unheld labels)."""
    return F.softplus(-real_logits).mean(1) + masked_mean(F.softplus(fake_logits), judged)


def device_losses(fake_logits: Tensor, gan_loss: str, judged: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per device, with the updated D_kj on G_k(z_g): the printed ``L_kj = E[log(1 - D(G(z_g)))]`` (sent to
    the edge) and the generator objective l_kj whose gradient is the feedback: ``non_saturating``
    ``-E[log D(G(z_g))]`` or ``saturating`` (L_kj itself)."""
    device_loss = -masked_mean(F.softplus(fake_logits), judged)
    if gan_loss == "non_saturating":
        return device_loss, masked_mean(F.softplus(-fake_logits), judged)
    return device_loss, device_loss


def sample_feedback(objective: Tensor, samples: Tensor) -> Tensor:
    """Per device, d l_kj / d G_k(z_g): the gradient of each device's objective with respect to its own
    samples (``samples`` requires grad; devices' objectives depend only on their own rows)."""
    (grad,) = torch.autograd.grad(objective.sum(), samples)
    return grad


def finite_rows(*values: Tensor) -> Tensor:
    """bool ``[n]``: every entry of row i is finite in every tensor (each ``[n, ...]``)."""
    ok = torch.ones(values[0].shape[0], dtype=torch.bool, device=values[0].device)
    for value in values:
        ok &= torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(1)
    return ok


def zero_rows(values: Tensor, keep: Tensor) -> Tensor:
    """``values`` with the rows outside ``keep`` (bool ``[n]``) set to 0 (feedback that must not count)."""
    return torch.where(keep.view(-1, *[1] * (values.dim() - 1)), values, torch.zeros_like(values))


def edge_generator_loss(regenerated: Tensor, weights: Tensor, feedback: Tensor) -> Tensor:
    """The edge's surrogate loss ``sum_j w_kj <G_k(z_g), feedback_kj>``: its gradient in G_k's parameters is
    ``sum_j w_kj d l_kj / d theta`` (the chain rule through the regenerated samples)."""
    w = weights.view(-1, *[1] * (feedback.dim() - 1)).to(feedback.dtype)
    return (regenerated * (w * feedback)).sum()


def with_instance_noise(x: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``x + std * N(0, I)`` (instance noise; ``x`` itself for ``std = 0``, drawing nothing). Real and fake
    samples blurred by the same noise no longer have disjoint supports, so a discriminator cannot reject
    every fake with certainty, while ``p_g = p_data`` stays the optimum (Arjovsky & Bottou, ICLR 2017)."""
    if std == 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def r1_penalty(real_logits: Tensor, seen: Tensor) -> Tensor:
    """Per device ``[n, B] -> [n]``: ``E_x ||grad_x D(x)||^2`` over its real samples (Mescheder, Geiger &
    Nowozin, ICML 2018), with the graph kept so that D's step can differentiate it. ``seen`` ``[n, B', ...]``
    requires grad and holds the real batch in its first B columns. Rows and samples share no parameters or
    statistics (no batch norm), so the gradient of the sum is each sample's own gradient."""
    (grad,) = torch.autograd.grad(real_logits.sum(), seen, create_graph=True)
    n, B = real_logits.shape
    return grad[:, :B].float().pow(2).reshape(n, B, -1).sum(2).mean(1)


class DeviceStep(NamedTuple):
    """What one local iteration of the devices in rows yields (``device_iteration``)."""

    d_loss: Tensor        # [n] D_kj's GAN loss before its step (``discriminator_loss``; the penalty apart)
    device_loss: Tensor   # [n] L_kj with the updated D_kj
    feedback: Tensor      # [n, B, *shape] d l_kj / d G_k(z_g)
    stepped: object       # what ``update`` returned (which devices' D stepped)
    r1_penalty: Tensor    # [n] E ||grad_x D_kj(x)||^2 on the real batch (``r1_penalty``; 0 without it)


def device_iteration(discriminate, update, real_x: Tensor, real_y: Tensor, fake_d: Tensor, y_d: Tensor,
                     fake_g: Tensor, y_g: Tensor, gan_loss: str, judged_d: Tensor | None = None,
                     judged_g: Tensor | None = None, instance_noise: float = 0.0,
                     generator: torch.Generator | None = None, r1_gamma: float = 0.0) -> DeviceStep:
    """Method §2, steps 1-3, for devices in rows (``[n, B, ...]``):

    1-2. D_kj's loss on its real batch and on G_k(z_d) (one call over both), plus ``r1_gamma / 2`` times
         the R1 penalty on the real batch (``r1_penalty``; nothing at 0), and ``update(loss)``: the
         backward pass and the optimiser step, returning which devices stepped;
    3.   with the updated D_kj, the printed L_kj and the feedback d l_kj / d G_k(z_g).

    ``discriminate(x, labels, frozen)`` returns each row's logits ``[n, B']`` (``frozen``: no gradient to
    D's parameters); ``judged_*`` leave out the fakes of labels a device holds no data for;
    ``instance_noise`` > 0 blurs every image D sees (``with_instance_noise``, drawn from ``generator``: the
    real batch, G_k(z_d), then G_k(z_g)); the feedback is then the gradient at the noisy samples.
    D_kj minimises ``d_loss + r1_gamma / 2 * r1_penalty``; the two are returned apart, so that the GAN loss
    (which ``fedgen_pl/health.py`` reads for saturation) means the same with and without the penalty."""
    B = real_x.shape[1]
    seen = with_instance_noise(torch.cat([real_x, fake_d], 1), instance_noise, generator)
    if r1_gamma:
        seen = seen.detach().requires_grad_(True)
    logits = discriminate(seen, torch.cat([real_y, y_d], 1), False)
    d_loss = discriminator_loss(logits[:, :B], logits[:, B:], judged_d)
    if r1_gamma:
        penalty = r1_penalty(logits[:, :B], seen)
        stepped = update(d_loss + r1_gamma / 2 * penalty)
    else:
        penalty = torch.zeros_like(d_loss)
        stepped = update(d_loss)
    fake_g = fake_g.detach().requires_grad_(True)
    judged_fakes = discriminate(with_instance_noise(fake_g, instance_noise, generator), y_g, True)
    device_loss, objective = device_losses(judged_fakes, gan_loss, judged_g)
    return DeviceStep(d_loss, device_loss, sample_feedback(objective, fake_g), stepped, penalty)
