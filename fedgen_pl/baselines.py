"""The paper's baselines, as variants of the same engine (same data, networks, clock, metrics).

What changes is only which network serves which device and how the cloud combines them:

| model.name       | generators         | discriminators      | edge weights | cloud                      |
|------------------|--------------------|---------------------|--------------|----------------------------|
| centralized_gan  | one                | one (pooled batch)  | plain mean   | none (G is the global one) |
| md_gan           | one                | one per device      | plain mean   | none                       |
| fed_gan          | one per device     | one per device      | -            | FedAvg of G and D by counts |
| reg_cgan         | one, domain-cond.  | one, domain-cond.   | plain mean   | none; L_inv only           |
| fed_cgan         | one per device     | one per device      | -            | FedAvg of G and D by counts |

The federation keys these rules replace (tau_edge, tau_cloud, cloud_lr, aggregation, and for the
label-related baselines lambda_spe) are reported in the log when a baseline starts.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from fedgen_pl.aggregation import fedavg_average, sync_edge_weights
from fedgen_pl.cloud import Cloud
from fedgen_pl.label_related import LabelRelatedGAN
from fedgen_pl.system import FederatedGAN

log = logging.getLogger("fedgen")


class _Baseline:
    """Shared by the baselines: a fixed cloud rule, and a log line naming the keys it replaces."""

    replaced_keys = "federation.tau_edge, federation.tau_cloud, federation.cloud_lr, federation.aggregation"

    def build_cloud(self) -> Cloud:
        # with one generator: G <- G_1; with one per device: FedAvg by counts (cloud_lr 1, tau unused)
        return Cloud("fedavg", 0.0, 1.0, self.round_end_hooks())

    def on_fit_start(self) -> None:
        super().on_fit_start()
        log.info("%s: this baseline's own rules replace %s", self.cfg.model.name, self.replaced_keys)


class _PlainMeanEdges:
    """One generator fed by every device, with the plain mean of their losses (AsynDGAN's rule)."""

    generator_groups = "single"

    def edge_weights(self, device_loss: Tensor, staleness: Tensor, arrived: Tensor) -> Tensor:
        return sync_edge_weights(device_loss, self.generators.group, self.num_generators, 0.0, arrived)


class _FedAvgDevices:
    """Every device trains a whole GAN; each round the cloud averages generators (through the
    aggregation callback) and discriminators (here), weighted by sample counts, and sends them back,
    directly or through the edges (``federation.fedavg_via_edges``). Nothing generated crosses the
    network: only parameters, each round."""

    generator_groups = "device"

    def dispatch_bytes(self) -> int:
        return 0

    def feedback_bytes(self) -> int:
        return 0

    def round_end_hooks(self) -> list:
        return [*super().round_end_hooks(), type(self).average_discriminators]

    @torch.no_grad()
    def average_discriminators(self) -> None:
        """The cloud's second FedAvg of the round: the device discriminators, by sample counts."""
        counts = torch.tensor(self.spec.device_sample_counts, device=self.device)
        via_edges = self.cfg.federation.fedavg_via_edges
        averaged = fedavg_average(self.device_discriminators.stacked_state(), counts,
                                  self.community_of_device if via_edges else None, self.num_communities)
        self.device_discriminators.broadcast(averaged)

    def count_round_bytes(self) -> None:
        """Every device sends its G and D up and gets the averages back; via the edges, only the K edge
        averages travel between edge and cloud."""
        model = self.generator_bytes() + sum(t[0].numel() * t.element_size()
                                             for t in self.device_discriminators.stacked_state().values())
        hops = self.num_communities if self.cfg.federation.fedavg_via_edges else self.num_devices
        self.bytes["device_to_edge"] += self.num_devices * model
        self.bytes["edge_to_device"] += self.num_devices * model
        self.bytes["edge_to_cloud"] += hops * model
        self.bytes["cloud_to_edge"] += hops * model


class _Local:
    """Nothing crosses a network (the centralized baselines)."""

    def dispatch_bytes(self) -> int:
        return 0

    def feedback_bytes(self) -> int:
        return 0

    def count_round_bytes(self) -> None:
        pass


class CentralizedGAN(_Baseline, _Local, _PlainMeanEdges, FederatedGAN):
    """One GAN on the pooled data of all devices: one generator, one discriminator, every step's batch
    the union of all devices' batches."""

    discriminator_groups = "single"


class MDGAN(_Baseline, _PlainMeanEdges, FederatedGAN):
    """AsynDGAN / the paper's M-D GAN: one generator, every device's discriminator, plain mean of their
    losses, no community tier (the generator's server talks to the devices directly)."""

    def count_round_bytes(self) -> None:
        pass


class FedGAN(_Baseline, _FedAvgDevices, FederatedGAN):
    """Fan & Liu 2020: every device trains a full GAN; G and D are averaged FedAvg-style."""


class RegCGAN(_Baseline, _Local, _PlainMeanEdges, LabelRelatedGAN):
    """Centralized RegCGAN: one domain-conditional G and D on all data, with the L_inv regulariser and
    no domain classifier. Mao & Li's second regulariser (the discriminator's last hidden layer made
    similar for the paired images, their Fig. 1(d)) is not part of the method (docs/method.md) and not built."""

    discriminator_groups = "single"
    replaced_keys = _Baseline.replaced_keys + ", model.lambda_spe, model.classifier_steps"

    @property
    def lambdas(self) -> tuple[float, float]:
        return float(self.cfg.model.lambda_inv), 0.0

    def train_domain_classifier(self) -> list[float]:
        return []


class FedCGAN(_Baseline, _FedAvgDevices, LabelRelatedGAN):
    """A FedAvg domain-conditional GAN: every device trains a full cGAN; the cloud averages them."""

    replaced_keys = _Baseline.replaced_keys + ", model.lambda_inv, model.lambda_spe, model.classifier_steps"

    @property
    def lambdas(self) -> tuple[float, float]:
        return 0.0, 0.0

    def train_domain_classifier(self) -> list[float]:
        return []
