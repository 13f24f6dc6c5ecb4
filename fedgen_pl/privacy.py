"""Differential privacy for what leaves a device (method §15): two Gaussian mechanisms and their accounting.

What a device sends depends on its private data, so each message is sanitised on the device, before the
transport (the in-process engine and the Flower ClientApp call the same functions):

- **Feedback** (``samples`` traffic: fedgen_fr, fedgen_lr, md_gan), after GS-WGAN (Chen, Orekondy & Fritz,
  NeurIPS 2020): each per-sample gradient at the generated images, scaled to the batch sum
  ``g_i = B * d l / d x_i``, is clipped to l2 norm C and gets ``N(0, sigma^2 C^2 I)``; the loss value
  L_kj (the edge's Eq. 4, and through L*_k the cloud's Eq. 1) is clamped into [-b, 0] and gets
  ``N(0, (sigma b / 2)^2)``.
- **Model updates** (``models`` traffic: fed_gan, fed_cgan, fed_vae), after DP-FedAvg (McMahan, Ramage,
  Talwar & Zhang, ICLR 2018): each device's update ``theta_k - theta_start`` (every floating tensor that
  leaves it, buffers included) is clipped to l2 norm C and gets ``N(0, sigma^2 C^2 I)`` on the device.

Neighbouring data sets: any two data sets of one device (every record may differ), the rest fixed. The
discriminator (or the local model) is trained on the raw data, so it can change arbitrarily between them:
each clipped vector moves by at most 2C in l2, the clamped loss by at most b. One message of ``r`` vectors
(B per-sample gradients plus the loss, which has the same ratio 2/sigma; or one update per model part) is
then a Gaussian mechanism with RDP ``eps(alpha) = alpha * 2r / sigma^2`` (Mironov 2017, Prop. 7), i.e. one of
noise multiplier ``z = sigma / (2 sqrt(r))`` and sensitivity 1. Every iteration (feedback) or round
(updates) releases one such message, with no subsampling (q = 1), so Opacus' RDP accountant composes
``steps`` of them and converts to (eps, delta). The generators, samples and metrics are post-processing
of the sanitised messages (and of public data: sample counts, noise, the edge's own draws), so they
inherit the bound. The guarantee is per device and holds against the edge and everything downstream.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import Tensor

from fedgen_pl.config import KEYS
from fedgen_pl.errors import ConfigError

# Opacus' RDP orders (RDPAccountant.DEFAULT_ALPHAS), with orders near 1 for large eps and large ones for the
# large-noise regime of q = 1.
ORDERS = [1 + x / 100.0 for x in range(1, 10)] + [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [
    80, 128, 256, 512, 1024]


def clip_rows(values: Tensor, clip: float, row_dims: int) -> Tensor:
    """Each row of ``values`` (its first ``row_dims`` dims index rows; the rest, flattened, is the vector)
    scaled to l2 norm <= ``clip``: ``v * min(1, C / ||v||)``. Per-sample feedback ``[n, B, *shape]``:
    ``row_dims=2``; stacked updates ``[n, P]``: 1."""
    flat = values.reshape(*values.shape[:row_dims], -1)
    norms = flat.norm(dim=-1, keepdim=True)
    return (flat * (clip / norms.clamp(min=1e-12)).clamp(max=1.0)).reshape(values.shape)


def sanitize_feedback(device_loss: Tensor, feedback: Tensor, clip: float, loss_bound: float,
                      noise_multiplier: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """GS-WGAN's sanitiser on one iteration's messages of ``n`` devices.

    ``feedback`` ``[n, B, *shape]`` is ``d l / d x_i`` with ``l`` a batch mean, so ``B * feedback`` is the
    per-sample gradient of the batch sum, clipped to C: ``g_i = clip_C(B f_i) + N(0, sigma^2 C^2 I)``, sent as
    ``g_i / B``. ``device_loss`` ``[n]`` (L_kj <= 0): ``clamp(L, -b, 0) + N(0, (sigma b / 2)^2)``.
    Returns (loss ``[n]``, feedback ``[n, B, *shape]``)."""
    B = feedback.shape[1]
    per_sample = clip_rows(feedback.float() * B, clip, 2)
    noise = torch.randn(per_sample.shape, generator=generator, device=per_sample.device, dtype=per_sample.dtype)
    sent = ((per_sample + noise_multiplier * clip * noise) / B).to(feedback.dtype)
    loss_noise = torch.randn(device_loss.shape, generator=generator, device=device_loss.device)
    loss = device_loss.float().clamp(-loss_bound, 0.0) + noise_multiplier * loss_bound / 2 * loss_noise
    return loss.to(device_loss.dtype), sent


def sanitize_updates(local: dict[str, Tensor], start: dict[str, Tensor], clip: float, noise_multiplier: float,
                     generator: torch.Generator) -> dict[str, Tensor]:
    """DP-FedAvg's sanitiser on the stacked models of ``n`` devices (every value ``[n, ...]``): the update
    ``local - start`` of each device over all floating tensors together is clipped to l2 norm C and gets
    ``N(0, sigma^2 C^2 I)``; returns ``start + sanitised update`` (what the device sends). Integer buffers
    (counters) pass unchanged."""
    names = [k for k, v in local.items() if torch.is_floating_point(v)]
    if not names:
        return dict(local)
    n = local[names[0]].shape[0]
    update = torch.cat([(local[k].float() - start[k].float()).reshape(n, -1) for k in names], 1)
    update = clip_rows(update, clip, 1)
    update = update + noise_multiplier * clip * torch.randn(update.shape, generator=generator, device=update.device)
    sent, offset = dict(local), 0
    for k in names:
        size = local[k][0].numel()
        sent[k] = (start[k].float() + update[:, offset:offset + size].reshape(local[k].shape)).to(local[k].dtype)
        offset += size
    return sent


# -- accounting (Opacus) --------------------------------------------------------------------------------------
def accountant_noise(noise_multiplier: float, vectors_per_message: int) -> float:
    """The noise multiplier of a sensitivity-1 Gaussian mechanism equivalent to one message of
    ``vectors_per_message`` clipped vectors, each with sensitivity 2C and noise sigma C: ``sigma / (2 sqrt(r))``."""
    return noise_multiplier / (2.0 * math.sqrt(vectors_per_message))


def epsilon(noise_multiplier: float, vectors_per_message: int, steps: int, delta: float) -> float:
    """The eps of ``steps`` messages at ``delta`` (Opacus' RDP analysis, q = 1): inf when the noise is 0."""
    if noise_multiplier <= 0:
        return math.inf
    if steps <= 0:
        return 0.0
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    rdp = compute_rdp(q=1.0, noise_multiplier=accountant_noise(noise_multiplier, vectors_per_message), steps=steps,
                      orders=ORDERS)
    with warnings.catch_warnings():      # "optimal order is the smallest alpha": eps is then a looser upper bound
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def noise_for_epsilon(target_epsilon: float, vectors_per_message: int, steps: int, delta: float) -> float:
    """The noise multiplier sigma at which ``steps`` messages spend ``target_epsilon`` (Opacus'
    ``get_noise_multiplier``, RDP, q = 1; to within 0.01 in eps below the target)."""
    from opacus.accountants.utils import get_noise_multiplier
    with warnings.catch_warnings():      # Opacus' note on the optimal order (see ``epsilon``)
        warnings.simplefilter("ignore", UserWarning)
        z = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=1.0, steps=steps,
                                 accountant="rdp", epsilon_tolerance=0.01, alphas=ORDERS)
    return float(z) * 2.0 * math.sqrt(vectors_per_message)


@dataclass(frozen=True)
class Privacy:
    """One run's privacy: the mechanism its traffic needs, sigma, C, b, delta, and the vectors per message."""

    mechanism: str               # feedback | updates
    noise_multiplier: float      # sigma
    clip: float                  # C
    loss_bound: float            # b (feedback)
    delta: float
    vectors_per_message: int     # B + 1 (feedback) or the number of model parts (updates)

    def epsilon(self, steps: int) -> float:
        return epsilon(self.noise_multiplier, self.vectors_per_message, steps, self.delta)


# -- a run's privacy, from its config ---------------------------------------------------------------------


def _where_nothing_leaves(cfg, recipe) -> str | None:
    """Why no device message exists to protect (None when one does)."""
    if recipe.traffic == "none":
        return f"model.name={cfg.model.name} trains on the pooled data on one machine: nothing leaves a device"
    if recipe.family == "vae" and cfg.model.vae_average == "none":
        return "model.vae_average=none: every device keeps its VAE, nothing leaves it"
    return None


def planned_steps(cfg, mechanism: str) -> int:
    """The messages each device sends over the schedule: one feedback per local iteration (sync: rounds x
    local_iters) or one update per round."""
    f = cfg.federation
    return f.global_rounds * f.local_iters if mechanism == "feedback" else f.global_rounds


def check_config(cfg, recipe) -> None:
    """Privacy keys only where they mean something for the model's ``recipe`` (recipes.py), and a target eps
    the schedule can meet (exit 2 otherwise)."""
    p = cfg.privacy
    defaults = {key.name: key.default for key in KEYS if key.name.startswith("privacy.")}   # config.py's one place
    changed = [k for k, default in defaults.items() if OmegaConf.select(cfg, k) != default]
    if not changed:
        return
    nothing = _where_nothing_leaves(cfg, recipe)
    if nothing:
        raise ConfigError(f"has no meaning here: {nothing}; leave the privacy keys at their defaults", where=changed[0])
    on = p.noise_multiplier > 0 or p.target_epsilon is not None
    if not on:
        raise ConfigError("has no effect without noise (privacy.noise_multiplier=0 is no privacy); set "
                          "privacy.noise_multiplier > 0 or privacy.target_epsilon", where=changed[0])
    if recipe.traffic != "samples" and "privacy.loss_bound" in changed:
        raise ConfigError(f"bounds the loss value that {cfg.model.name}'s devices never send (they send model "
                          f"updates: privacy.clip bounds those); leave it at {defaults['privacy.loss_bound']}",
                          where="privacy.loss_bound")
    if p.target_epsilon is None:
        return
    if p.noise_multiplier > 0:
        raise ConfigError(f"is set together with privacy.noise_multiplier={p.noise_multiplier}; give one of them "
                          f"(the target solves for the noise)", where="privacy.target_epsilon")
    if not (isinstance(p.target_epsilon, (int, float)) and math.isfinite(p.target_epsilon) and p.target_epsilon > 0):
        raise ConfigError(f"must be a number > 0, got {p.target_epsilon}", where="privacy.target_epsilon")
    if recipe.traffic == "samples" and cfg.federation["update"] == "async":
        raise ConfigError("needs the number of messages in advance, which async updates do not fix; set "
                          "privacy.noise_multiplier instead (the eps spent is reported)", where="privacy.target_epsilon")
    privacy_of(cfg, recipe)       # a target the schedule cannot meet raises here


def privacy_of(cfg, recipe) -> Privacy | None:
    """The run's privacy (None when ``privacy.noise_multiplier`` is 0 and no target is set)."""
    p = cfg.privacy
    if p.noise_multiplier == 0 and p.target_epsilon is None:
        return None
    if recipe.traffic == "samples":
        mechanism, vectors = "feedback", int(cfg.data.batch_size) + 1
    else:          # FedAvg: the generator and the discriminator (GANs), or the shared part of the VAE
        mechanism, vectors = "updates", 2 if recipe.family == "gan" else 1
    sigma = float(p.noise_multiplier)
    if p.target_epsilon is not None:
        steps = planned_steps(cfg, mechanism)
        try:
            sigma = noise_for_epsilon(float(p.target_epsilon), vectors, steps, float(p.delta))
        except ValueError as err:        # Opacus: "The privacy budget is too low."
            raise ConfigError(f"{p.target_epsilon} at delta={p.delta} over {steps} messages of {vectors} vectors "
                              f"needs more noise than Opacus searches ({err}); raise the target or shorten the "
                              f"schedule", where="privacy.target_epsilon") from None
    return Privacy(mechanism, sigma, float(p.clip), float(p.loss_bound), float(p.delta), vectors)


def describe(privacy: Privacy | None, cfg) -> str:
    """The run's one log line about privacy."""
    if privacy is None:
        return "privacy: none (privacy.noise_multiplier=0): the devices' messages are not sanitised; no eps"
    what = ("per-sample feedback clipped to C and L_kj to [-b, 0] (GS-WGAN)" if privacy.mechanism == "feedback"
            else "each device's model update clipped to C (DP-FedAvg)")
    steps = planned_steps(cfg, privacy.mechanism)
    spent = f"eps {privacy.epsilon(steps):.4g} after the schedule's {steps} messages" \
        if privacy.mechanism == "updates" or cfg.federation["update"] == "sync" else "eps reported as spent"
    return (f"privacy: {what}, sigma={privacy.noise_multiplier:.6g}, C={privacy.clip:g}"
            f"{f', b={privacy.loss_bound:g}' if privacy.mechanism == 'feedback' else ''}; {spent} at "
            f"delta={privacy.delta:g} per device (Opacus RDP)")


def privacy_record(model) -> dict:
    """``summary.json``'s privacy: the mechanism, its settings and the final eps (none without privacy)."""
    privacy = model.privacy
    if privacy is None:
        return {"mechanism": "none", "epsilon": None}
    return {"mechanism": privacy.mechanism, "noise_multiplier": privacy.noise_multiplier, "clip": privacy.clip,
            "loss_bound": privacy.loss_bound if privacy.mechanism == "feedback" else None, "delta": privacy.delta,
            "vectors_per_message": privacy.vectors_per_message,
            "messages": model.iteration if privacy.mechanism == "feedback" else model.round,
            "epsilon": model.privacy_metrics()["privacy/epsilon"]}
