"""The federated VAE (docs/method.md §9): every device trains a VAE on its own data; each round the edges
average their devices' parameters weighted by sample counts, the cloud averages the edges weighted by
their totals, and the result goes back down (``fedavg_via_edges`` decides whether the average travels
through the edges; the numbers are the same). ``model.vae_average=decoder`` averages only the decoders
(encoders stay private). Samples for the metrics decode z ~ N(0, I) (with the label when conditional).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgen_pl.aggregation import get_aggregation
from fedgen_pl.federation import FederationModule
from fedgen_pl.networks import DCGANGenerator
from fedgen_pl.optim import StackedAdam
from fedgen_pl.stacked import StackedModule


class VAE(nn.Module):
    """Convolutional encoder to (mean, log-variance); the DCGAN generator as decoder, emitting logits of
    pixel intensities. Conditional on the label when ``num_labels > 0`` (encoder and decoder)."""

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

    def _label(self, labels: Tensor | None, like: Tensor) -> Tensor:
        return F.one_hot(labels, self.num_labels).to(like.dtype)

    def forward(self, x: Tensor, labels: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample: the negative ELBO's reconstruction term (Bernoulli, summed over pixels) and KL term,
        for images ``x`` in [-1, 1] and standard-normal noise ``eps``."""
        h = self.encoder(x)
        if self.num_labels:
            h = torch.cat([h, self._label(labels, h)], dim=-1)
        mean, log_var = self.posterior(h).chunk(2, dim=-1)
        z = mean + (0.5 * log_var).exp() * eps
        logits = self.decoder(z, labels)
        target = (x + 1) / 2
        reconstruction = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
        return reconstruction, kl

    def decode(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """Images in [-1, 1]: the decoder's mean intensities."""
        return torch.sigmoid(self.decoder(z, labels)) * 2 - 1


class FedVAE(FederationModule):
    """Every device trains its own VAE (recipe ``fed_vae``: one member per device, FedAvg in the cloud)."""

    def __init__(self, config: dict, spec: dict):
        super().__init__(config, spec)
        m = self.cfg.model
        if len(self.spec.data_shape) != 3:
            raise ValueError("fed_vae needs image data")
        num_labels = self.spec.num_labels if m.conditional else 0
        self.global_vae = VAE(self.spec.data_shape, m.latent_dim, num_labels, m.g_channels, m.g_norm)
        self.device_vaes = StackedModule(self.global_vae, self.num_devices, execution=self.cfg.trainer.member_execution,
                                        compile_mode=self.cfg.trainer.compile)

    def global_model(self) -> nn.Module:
        return self.global_vae

    def configure_optimizers(self):
        return StackedAdam(self.device_vaes.parameters(), self.num_devices, lr=self.cfg.model.g_lr,
                           betas=(0.9, 0.999))

    def _shared(self, name: str) -> bool:
        return self.cfg.model.vae_average == "all" or name.startswith("decoder.")

    # -- one clock event -----------------------------------------------------------------------------
    def negative_elbo(self, x: Tensor, labels: Tensor, eps: Tensor, vaes: StackedModule | None = None) -> Tensor:
        """Mean over the batch of reconstruction + KL, per device: ``[N]``."""
        reconstruction, kl = (vaes or self.device_vaes)(x, labels, eps)
        return (reconstruction + kl).mean(1)

    def local_update(self, event, optimizers: list) -> dict:
        """Every device that reports takes one ELBO step on its own data."""
        opt = optimizers[0]
        arrived = torch.from_numpy(event.arrived).to(self.device)
        rng, B = self.generator_rng(), self.cfg.data.batch_size
        x, y = self.data.sample_real(B, rng)
        eps = torch.randn(self.num_devices, B, self.cfg.model.latent_dim, generator=rng, device=self.device)
        loss = self.negative_elbo(x, y, eps)
        opt.zero_grad(set_to_none=True)
        finite_loss = torch.isfinite(loss.detach())
        self.backprop(torch.where(arrived & finite_loss, loss, torch.zeros_like(loss)).sum())
        # Non-finite guard (trainer.nonfinite): a device with a NaN/inf loss or gradient does not step.
        step = arrived & finite_loss & self.device_vaes.finite_grads()
        clear = bool((step == arrived).all())       # the one host sync of the step
        if not clear:
            self.federation.report_nonfinite(arrived & ~step)
        opt.step(active=None if clear and bool(event.arrived.all()) else step)
        with torch.no_grad():
            self.federation.record_updates(step, loss.detach())
        return {"arrived": step, "loss": loss.detach()}

    def step_metrics(self, stats: dict) -> dict:
        arrived = stats["arrived"]
        return {"train/negative_elbo": (stats["loss"] * arrived).sum() / arrived.sum().clamp(min=1)}

    # -- the cloud -------------------------------------------------------------------------------------
    @torch.no_grad()
    def end_round(self) -> dict:
        """FedAvg of the devices' shared parameters (all, or the decoders), sent back down; with private
        encoders the global encoder is only a summary for checkpoints (the sample-weighted mean, never sent)."""
        shared = {k: v for k, v in self.device_vaes.stacked_state().items() if self._shared(k)}
        new_state, record = self.aggregate_round(get_aggregation("fedavg"), 0.0, 1.0,
                                                 {k: v for k, v in self.global_vae.state_dict().items()
                                                  if self._shared(k)}, shared)
        self.global_vae.load_state_dict(new_state, strict=False)
        stacked = self.device_vaes.stacked_state()
        for name, value in new_state.items():
            stacked[name].copy_(value.unsqueeze(0).expand_as(stacked[name]))
        if self.cfg.model.vae_average == "decoder":
            counts = self.federation.generator_sample_counts
            weights = counts / counts.sum()
            for name, value in self.global_vae.state_dict().items():
                if not self._shared(name) and torch.is_floating_point(value):
                    value.copy_((stacked[name] * weights.view(-1, *[1] * value.dim())).sum(0))
        self.close_round(self.round_bytes())
        return {"round": self.round, **record}

    def round_bytes(self) -> dict[str, int]:
        """Every device sends its shared parameters up and gets the average back (via the edges: only the
        K edge averages travel between edge and cloud)."""
        model = sum(t.numel() * t.element_size() for k, t in self.global_vae.state_dict().items() if self._shared(k))
        hops = self.num_communities if self.cfg.federation.fedavg_via_edges else self.num_devices
        return {"device_to_edge": self.num_devices * model, "edge_to_device": self.num_devices * model,
                "edge_to_cloud": hops * model, "cloud_to_edge": hops * model}

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator, domains: Tensor | None = None) -> Tensor:
        z = torch.randn(len(labels), self.cfg.model.latent_dim, generator=generator, device=labels.device)
        return self.global_vae.decode(z, labels)

    @torch.no_grad()
    def global_negative_elbo(self, x: Tensor, labels: Tensor, generator: torch.Generator) -> float:
        """The global VAE's mean negative ELBO on images ``x`` (in [-1, 1])."""
        eps = torch.randn(len(x), self.cfg.model.latent_dim, generator=generator, device=x.device)
        reconstruction, kl = self.global_vae(x, labels, eps)
        return float((reconstruction + kl).mean())
