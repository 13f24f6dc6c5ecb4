"""The federated VAE (docs/method.md §9): every device trains a VAE on its own data; each round the edges
average their devices' parameters weighted by sample counts, the cloud averages the edges weighted by
their totals, and the result goes back down (``fedavg_via_edges`` decides whether the average travels
through the edges; the numbers are the same up to float rounding: a count-weighted mean of count-weighted
means is the flat count-weighted mean). ``model.vae_average=decoder`` averages only the decoders (encoders
stay private); ``none`` averages nothing (the local-only floor). ``centralized_vae`` is one VAE on the pooled
data. Samples for the metrics decode z ~ N(0, I) (with the label when conditional).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgen_pl.aggregation import get_aggregation
from fedgen_pl.federation import FederationModule
from fedgen_pl.metrics.likelihood import (bernoulli_log_likelihood, gaussian_kl, gaussian_log_density,
                                         iw_negative_elbo, mixture_bound)
from fedgen_pl.networks import DCGANGenerator
from fedgen_pl.optim import StackedAdam
from fedgen_pl.stacked import StackedModule


class VAE(nn.Module):
    """Convolutional encoder to (mean, log-variance); the DCGAN generator as decoder, emitting logits of
    pixel intensities. Conditional on the label when ``num_labels > 0`` (encoder and decoder). The maths of
    the bounds is in fedgen_pl/metrics/likelihood.py."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, num_labels: int = 0, channels: int = 32,
                 norm: str = "group"):
        super().__init__()
        c, h, w = image_shape
        self.num_labels = num_labels
        self.encoder = nn.Sequential(
            nn.Conv2d(c, channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.posterior = nn.Linear(2 * channels * (h // 4) * (w // 4) + num_labels, 2 * latent_dim)
        self.decoder = DCGANGenerator(latent_dim, image_shape, num_labels, channels, norm, output="logits")

    def encode(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """q(z|x): its mean and log-variance, for images ``x`` in [-1, 1]."""
        h = self.encoder(x)
        if self.num_labels:
            h = torch.cat([h, F.one_hot(labels, self.num_labels).to(h.dtype)], dim=-1)
        return self.posterior(h).chunk(2, dim=-1)

    def forward(self, x: Tensor, labels: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample: the negative ELBO's reconstruction term (-log p(x|z), one z = mean + std * eps) and KL
        term, for images ``x`` in [-1, 1] and standard-normal noise ``eps``."""
        mean, log_var = self.encode(x, labels)
        z = mean + (0.5 * log_var).exp() * eps
        reconstruction = -bernoulli_log_likelihood(self.decoder(z, labels), (x + 1) / 2)
        return reconstruction, gaussian_kl(mean, log_var)

    def log_weights(self, x: Tensor, labels: Tensor, eps: Tensor) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for ``eps`` ``[K, n, latent]``: ``[K, n]``."""
        mean, log_var = self.encode(x, labels)
        z = mean + (0.5 * log_var).exp() * eps
        K, n = eps.shape[:2]
        repeat = labels.repeat(K) if labels is not None else None
        logits = self.decoder(z.reshape(K * n, -1), repeat).view(K, n, *x.shape[1:])
        return (bernoulli_log_likelihood(logits, ((x + 1) / 2).expand_as(logits)) + gaussian_log_density(z)
                - gaussian_log_density(z, mean, log_var))

    def decode(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """Images in [-1, 1]: the decoder's mean intensities."""
        return torch.sigmoid(self.decoder(z, labels)) * 2 - 1


class FedVAE(FederationModule):
    """VAEs on the devices (recipe ``fed_vae``: one per device, FedAvg of the whole VAE, of the decoders only,
    or none at all with ``model.vae_average``) or one VAE on the pooled data (``centralized_vae``)."""

    def __init__(self, config: dict, spec: dict):
        super().__init__(config, spec)
        m = self.cfg.model
        if len(self.spec.data_shape) != 3:
            raise ValueError("fed_vae needs image data")
        num_labels = self.spec.num_labels if m.conditional else 0
        self.global_vae = VAE(self.spec.data_shape, m.latent_dim, num_labels, m.g_channels, m.g_norm)
        # one VAE per member: per device (fed_vae) or one for the pooled data (centralized_vae)
        self.member_of_device = np.asarray(self.federation.device_groups[self.recipe.generators])
        self.device_vaes = StackedModule(self.global_vae, self.num_generators,
                                        execution=self.cfg.trainer.member_execution, compile_mode=self.cfg.trainer.compile)

    @property
    def local_only(self) -> bool:
        """``vae_average=none``: no averaging; the federation's model is the mixture of the devices' VAEs."""
        return self.cfg.model.vae_average == "none"

    def global_model(self) -> nn.Module:
        return self.global_vae

    def configure_optimizers(self):
        return StackedAdam(self.device_vaes.parameters(), self.num_generators, lr=self.cfg.model.g_lr,
                           betas=(0.9, 0.999))

    def _shared(self, name: str) -> bool:
        return self.cfg.model.vae_average == "all" or (self.cfg.model.vae_average == "decoder"
                                                        and name.startswith("decoder."))

    # -- one clock event -----------------------------------------------------------------------------
    def negative_elbo(self, x: Tensor, labels: Tensor, eps: Tensor, vaes: StackedModule | None = None) -> Tensor:
        """Mean over the batch of reconstruction + KL, per member: ``[members]``."""
        reconstruction, kl = (vaes or self.device_vaes)(x, labels, eps)
        return (reconstruction + kl).mean(1)

    def local_update(self, event, optimizers: list) -> dict:
        """Every member whose devices report takes one ELBO step on their data (the pooled batch of every
        device for the centralized VAE)."""
        opt = optimizers[0]
        groups = self.federation.generators
        member_arrived = np.zeros(groups.num_groups, dtype=bool)       # on the host: no device sync
        np.logical_or.at(member_arrived, self.member_of_device, event.arrived)
        arrived = torch.from_numpy(member_arrived).to(self.device)
        rng, B = self.generator_rng(), self.cfg.data.batch_size
        x, y = self.data.sample_real(B, rng)
        x, y = groups.to_members(x), groups.to_members(y)
        eps = torch.randn(*y.shape, self.cfg.model.latent_dim, generator=rng, device=self.device)
        loss = self.negative_elbo(x, y, eps)
        opt.zero_grad(set_to_none=True)
        finite_loss = torch.isfinite(loss.detach())
        self.backprop(torch.where(arrived & finite_loss, loss, torch.zeros_like(loss)).sum())
        # Non-finite guard (trainer.nonfinite): a member with a NaN/inf loss or gradient does not step.
        step = arrived & finite_loss & self.device_vaes.finite_grads()
        clear = bool((step == arrived).all())       # the one host sync of the step
        if not clear:
            self.federation.report_nonfinite((arrived & ~step)[groups.group])
        opt.step(active=None if clear and bool(member_arrived.all()) else step)
        with torch.no_grad():
            self.federation.record_updates(step, loss.detach())
        return {"arrived": step, "loss": loss.detach()}

    def step_metrics(self, stats: dict) -> dict:
        arrived = stats["arrived"]
        return {"train/negative_elbo": (stats["loss"] * arrived).sum() / arrived.sum().clamp(min=1)}

    # -- the cloud -------------------------------------------------------------------------------------
    @torch.no_grad()
    def end_round(self) -> dict:
        """FedAvg of the members' shared parameters (all, the decoders, or none), sent back down. What is not
        shared stays with each device; the global VAE then holds its sample-weighted mean, a summary for
        checkpoints that is never sent (and, with ``vae_average=none``, never sampled: see ``sample_global``)."""
        stacked = self.device_vaes.stacked_state()
        record = {"community_loss": self.federation.round_stats(0.0, 1.0).community_loss.tolist()}
        if self.cfg.model.vae_average != "none":
            global_state = {k: v for k, v in self.global_vae.state_dict().items() if self._shared(k)}
            sent = {k: v for k, v in stacked.items() if self._shared(k)}
            # every member started the round from the global VAE's part
            sent = self.sanitized_updates(sent, {k: v.unsqueeze(0).expand_as(sent[k]) for k, v in global_state.items()})
            new_state, record = self.aggregate_round(get_aggregation("fedavg"), 0.0, 1.0, global_state, sent)
            self.global_vae.load_state_dict(new_state, strict=False)
            for name, value in new_state.items():
                stacked[name].copy_(value.unsqueeze(0).expand_as(stacked[name]))
        weights = self.federation.generator_sample_counts / self.federation.generator_sample_counts.sum()
        for name, value in self.global_vae.state_dict().items():
            if not self._shared(name) and torch.is_floating_point(value):
                value.copy_((stacked[name] * weights.view(-1, *[1] * value.dim())).sum(0))
        self.close_round(self.round_bytes())
        return {"round": self.round, **record}

    def round_bytes(self) -> dict[str, int]:
        """Every device sends its shared parameters up and gets the average back (via the edges: only the
        K edge averages travel between edge and cloud); nothing when nothing is shared or data is pooled."""
        model = sum(t.numel() * t.element_size() for k, t in self.global_vae.state_dict().items() if self._shared(k))
        if self.recipe.traffic == "none":
            model = 0
        hops = self.num_communities if self.cfg.federation.fedavg_via_edges else self.num_devices
        return {"device_to_edge": self.num_devices * model, "edge_to_device": self.num_devices * model,
                "edge_to_cloud": hops * model, "cloud_to_edge": hops * model}

    # -- sampling and likelihood -----------------------------------------------------------------------
    def member_vaes(self) -> list[VAE]:
        """Each member's VAE as a standalone copy (its own encoder and decoder as the device holds them)."""
        return [self.device_vaes.member(i).eval() for i in range(self.num_generators)]

    def mixture_weights(self) -> Tensor:
        """The local-only mixture's weights: each device's share of the training samples."""
        return self.federation.generator_sample_counts / self.federation.generator_sample_counts.sum()

    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator, domains: Tensor | None = None) -> Tensor:
        """Decodes z ~ N(0, I); local-only: each sample from one device's VAE, drawn by its share of the data."""
        z = torch.randn(len(labels), self.cfg.model.latent_dim, generator=generator, device=labels.device)
        if not self.local_only:
            return self.global_vae.decode(z, labels)
        member = torch.multinomial(self.mixture_weights().to(labels.device), len(labels), replacement=True,
                                   generator=generator)
        out = torch.empty(len(labels), *self.spec.data_shape, device=labels.device)
        for i, vae in enumerate(self.member_vaes()):
            chosen = member == i
            if chosen.any():
                out[chosen] = vae.decode(z[chosen], labels[chosen])
        return out

    @torch.no_grad()
    def global_negative_elbo(self, x: Tensor, labels: Tensor, generator: torch.Generator) -> float:
        """The global VAE's mean negative ELBO on images ``x`` (in [-1, 1])."""
        eps = torch.randn(len(x), self.cfg.model.latent_dim, generator=generator, device=x.device)
        reconstruction, kl = self.global_vae(x, labels, eps)
        return float((reconstruction + kl).mean())

    @torch.no_grad()
    def per_sample_bounds(self, vae: VAE, x: Tensor, labels: Tensor, generator: torch.Generator, k: int = 0,
                          batch: int = 500) -> Tensor:
        """-ELBO (``k=0``) or -L_k per image of ``x`` under ``vae``: ``[n]``."""
        out, d = [], self.cfg.model.latent_dim
        for start in range(0, len(x), batch):
            xb, yb = x[start:start + batch], labels[start:start + batch]
            if k == 0:
                reconstruction, kl = vae(xb, yb, torch.randn(len(xb), d, generator=generator, device=x.device))
                out.append(reconstruction + kl)
            else:
                eps = torch.randn(k, len(xb), d, generator=generator, device=x.device)
                out.append(iw_negative_elbo(vae.log_weights(xb, yb, eps)))
        return torch.cat(out)

    @torch.no_grad()
    def model_bounds(self, x: Tensor, labels: Tensor, generator: torch.Generator, k: int = 0) -> Tensor:
        """Per image, the bound of the federation's generative model: the global VAE, or (local-only) the
        mixture of the devices' VAEs by their share of the data."""
        if not self.local_only:
            return self.per_sample_bounds(self.global_vae, x, labels, generator, k)
        members = torch.stack([self.per_sample_bounds(v, x, labels, generator, k) for v in self.member_vaes()])
        return mixture_bound(members, self.mixture_weights().to(x.device))

    @torch.no_grad()
    def likelihood_metrics(self, sets: dict[str, tuple[Tensor, Tensor]], iw_samples: int = 0,
                           seed: int = 0) -> dict[str, float]:
        """Test-set bounds in nats per image (fedgen_pl/metrics/likelihood.py), for ``sets`` of images in
        [-1, 1] and their labels by scope:

        - ``<scope>/negative_elbo``: the federation's model (``model_bounds``) on the scope's test images;
        - ``global/iw_negative_elbo``: its importance-weighted bound with ``iw_samples`` samples (when > 0);
        - ``devices/negative_elbo``: each device's own VAE (its encoder, the shared or own decoder) on the global
          test images, averaged over the devices by their share of the data."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = {f"{scope}/negative_elbo": float(self.model_bounds(x, y, generator).mean()) for scope, (x, y) in sets.items()}
        x, y = sets["global"]
        if iw_samples > 0:
            out["global/iw_negative_elbo"] = float(self.model_bounds(x, y, generator, iw_samples).mean())
        per_member = torch.stack([self.per_sample_bounds(v, x, y, generator).mean() for v in self.member_vaes()])
        out["devices/negative_elbo"] = float((per_member * self.mixture_weights().to(per_member.device)).sum())
        return out

    @torch.no_grad()
    def anomaly_scores(self, x: Tensor, label_prior: Tensor, generator: torch.Generator) -> Tensor:
        """``[devices, n]``: each device's -ELBO of images ``x`` (in [-1, 1]) under its own VAE, the anomaly score;
        a class-conditional VAE scores an image as the mixture over labels with ``label_prior`` (``[labels]``)."""
        scores = []
        for vae in self.member_vaes():
            if vae.num_labels:
                held = label_prior.nonzero().flatten().tolist()      # labels the federation trains on
                per_label = torch.stack([self.per_sample_bounds(vae, x, torch.full((len(x),), c, device=x.device),
                                                                generator) for c in held])
                scores.append(mixture_bound(per_label, label_prior[held].to(x.device)))
            else:
                scores.append(self.per_sample_bounds(vae, x, torch.zeros(len(x), dtype=torch.long, device=x.device),
                                                     generator))
        member_of_device = self.federation.generators.group
        return torch.stack(scores)[member_of_device]
