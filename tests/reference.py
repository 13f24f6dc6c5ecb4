"""A plain per-device Python loop of the same local iteration as ``FederatedGAN.step_event`` (sync).

It exists to check the vectorised implementation (tests: equal losses, parameters and optimiser
states) and to measure what vectorisation buys (benchmarks). One ``nn.Module`` and one
``torch.optim.Adam`` per device and per community; nothing stacked, nothing vmapped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LoopFederation:
    """Copies of a ``FederatedGAN``'s community generators and device discriminators as separate modules."""

    def __init__(self, system):
        cfg = system.cfg
        betas = (cfg.model.beta1, cfg.model.beta2)
        self.cfg = cfg
        self.community = system.spec.community_of_device
        self.num_communities = system.num_communities
        self.generators = [system.community_generators.member(k) for k in range(system.num_communities)]
        self.discriminators = [system.device_discriminators.member(n) for n in range(system.num_devices)]
        self.g_opts = [torch.optim.Adam(g.parameters(), lr=cfg.model.g_lr, betas=betas, foreach=False)
                       for g in self.generators]
        self.d_opts = [torch.optim.Adam(d.parameters(), lr=cfg.model.d_lr, betas=betas, foreach=False)
                       for d in self.discriminators]

    def local_iteration(self, batch):
        """Returns per-device (d_loss, device_loss, edge_weight) lists, like ``StepStats``."""
        d_losses = []
        for n, (disc, opt) in enumerate(zip(self.discriminators, self.d_opts)):
            with torch.no_grad():
                fake = self.generators[self.community[n]](batch.z_d[n], batch.y_d[n])
            loss = (F.softplus(-disc(batch.real_x[n], batch.real_y[n])).mean()
                    + F.softplus(disc(fake, batch.y_d[n])).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            d_losses.append(loss.detach())

        device_losses = [None] * len(self.discriminators)
        weights = [None] * len(self.discriminators)
        for k, (gen, opt) in enumerate(zip(self.generators, self.g_opts)):
            members = [n for n, c in enumerate(self.community) if c == k]
            losses, objectives = [], []
            for n in members:
                logits = self.discriminators[n](gen(batch.z_g[n], batch.y_g[n]), batch.y_g[n])
                losses.append(-F.softplus(logits).mean())
                if self.cfg.model.gan_loss == "non_saturating":
                    objectives.append(F.softplus(-logits).mean())
                else:
                    objectives.append(losses[-1])
            w = torch.softmax(self.cfg.federation.tau_edge * torch.stack(losses).detach(), dim=0)
            loss = (w * torch.stack(objectives)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for i, n in enumerate(members):
                device_losses[n], weights[n] = losses[i].detach(), w[i]
        return torch.stack(d_losses), torch.stack(device_losses), torch.stack(weights)
