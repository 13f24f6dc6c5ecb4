"""The paper's baselines, as configurations of the same engine (same data, networks, clock, metrics).

A baseline changes only which network serves which device, how an edge weighs its devices, what the
cloud does at the end of a round and what crosses the network. Each is one ``BaselineRules`` line:

| model.name       | generators         | discriminators      | edge weights | cloud                       | traffic |
|------------------|--------------------|---------------------|--------------|-----------------------------|---------|
| centralized_gan  | one                | one (pooled batch)  | plain mean   | none (G is the global one)  | none    |
| md_gan           | one                | one per device      | plain mean   | none                        | samples |
| fed_gan          | one per device     | one per device      | -            | FedAvg of G and D by counts | models  |
| reg_cgan         | one, domain-cond.  | one, domain-cond.   | plain mean   | none; L_inv only            | none    |
| fed_cgan         | one per device     | one per device      | -            | FedAvg of G and D by counts | models  |

Papers: centralized GAN and RegCGAN (Mao & Li 2018) are the pooled-data references; M-D GAN is the
paper's name for AsynDGAN (Chang et al. 2020: one generator, every device's discriminator); Fed GAN is
Fan & Liu 2020 (every device trains a whole GAN, FedAvg); FedCGAN is the same with domain-conditional
networks. The federation keys these rules replace (tau_edge, tau_cloud, cloud_lr, aggregation, and for the
label-related baselines lambda_spe) are reported in the log when a baseline starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from fedgen_pl.aggregation import fedavg_average, sync_edge_weights
from fedgen_pl.cloud import Cloud
from fedgen_pl.label_related import LabelRelatedGAN
from fedgen_pl.system import FederatedGAN

log = logging.getLogger("fedgen")

FEDERATION_KEYS = "federation.tau_edge, federation.tau_cloud, federation.cloud_lr, federation.aggregation"


@dataclass(frozen=True)
class BaselineRules:
    generators: str        # which generator serves a device: single (one for all) | device (one each)
    discriminators: str    # device (one each) | single (one, on the pooled batch of every device)
    plain_mean_edges: bool  # the generator weighs its devices' losses equally (AsynDGAN); else the engine's rule
    fedavg: bool           # every device trains a whole GAN; the cloud averages G and D by sample counts
    traffic: str           # none (one machine) | samples (devices <-> the generator's server) | models (FedAvg)
    lambda_inv: bool = False   # label-related: keep L_inv (RegCGAN's regulariser); L_spe and C never


class Baseline:
    """The engine's switches, read from ``rules``. Without FedAvg the cloud has one generator to take
    over (FedAvg of one member)."""

    rules: BaselineRules

    @property
    def generator_groups(self) -> str:
        return self.rules.generators

    @property
    def discriminator_groups(self) -> str:
        return self.rules.discriminators

    @property
    def replaced_keys(self) -> str:
        if not isinstance(self, LabelRelatedGAN):
            return FEDERATION_KEYS
        return FEDERATION_KEYS + (", model.lambda_spe, model.classifier_steps" if self.rules.lambda_inv
                                  else ", model.lambda_inv, model.lambda_spe, model.classifier_steps")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        log.info("%s: this baseline's own rules replace %s", self.cfg.model.name, self.replaced_keys)

    # -- edge ----------------------------------------------------------------------------------------
    def edge_weights(self, device_loss: Tensor, staleness: Tensor, arrived: Tensor) -> Tensor:
        if not self.rules.plain_mean_edges:          # one generator per device: the engine's rule over one device
            return super().edge_weights(device_loss, staleness, arrived)
        return sync_edge_weights(device_loss, self.generators.group, self.num_generators, 0.0, arrived)

    @property
    def lambdas(self) -> tuple[float, float]:
        return (float(self.cfg.model.lambda_inv) if self.rules.lambda_inv else 0.0), 0.0

    # -- cloud ---------------------------------------------------------------------------------------
    def build_cloud(self) -> Cloud:
        # with one generator: G <- G_1; with one per device: FedAvg by counts (cloud_lr 1, tau unused)
        return Cloud("fedavg", 0.0, 1.0, self.round_end_hooks())

    def round_end_hooks(self) -> list:
        return [type(self).average_discriminators] if self.rules.fedavg else []

    @torch.no_grad()
    def average_discriminators(self) -> None:
        """The cloud's second FedAvg of the round: the device discriminators, by sample counts, directly
        or through the edges (``federation.fedavg_via_edges``)."""
        counts = torch.tensor(self.spec.device_sample_counts, device=self.device)
        via_edges = self.cfg.federation.fedavg_via_edges
        averaged = fedavg_average(self.device_discriminators.stacked_state(), counts,
                                  self.community_of_device if via_edges else None, self.num_communities)
        self.device_discriminators.broadcast(averaged)

    # -- traffic -------------------------------------------------------------------------------------
    def dispatch_bytes(self) -> int:
        return super().dispatch_bytes() if self.rules.traffic == "samples" else 0

    def feedback_bytes(self) -> int:
        return super().feedback_bytes() if self.rules.traffic == "samples" else 0

    def count_round_bytes(self) -> None:
        """FedAvg: every device sends its G and D up and gets the averages back; via the edges, only the
        K edge averages travel between edge and cloud. Otherwise nothing moves at a round's end (there
        is no community tier)."""
        if self.rules.traffic != "models":
            return
        model = self.generator_bytes() + sum(t[0].numel() * t.element_size()
                                             for t in self.device_discriminators.stacked_state().values())
        hops = self.num_communities if self.cfg.federation.fedavg_via_edges else self.num_devices
        self.bytes["device_to_edge"] += self.num_devices * model
        self.bytes["edge_to_device"] += self.num_devices * model
        self.bytes["edge_to_cloud"] += hops * model
        self.bytes["cloud_to_edge"] += hops * model


class CentralizedGAN(Baseline, FederatedGAN):
    """One GAN on the pooled data of all devices: one generator, one discriminator, every step's batch
    the union of all devices' batches."""

    rules = BaselineRules(generators="single", discriminators="single", plain_mean_edges=True,
                          fedavg=False, traffic="none")


class MDGAN(Baseline, FederatedGAN):
    """AsynDGAN / the paper's M-D GAN: one generator, every device's discriminator, plain mean of their
    losses, no community tier (the generator's server talks to the devices directly)."""

    rules = BaselineRules(generators="single", discriminators="device", plain_mean_edges=True,
                          fedavg=False, traffic="samples")


class FedGAN(Baseline, FederatedGAN):
    """Fan & Liu 2020: every device trains a full GAN; G and D are averaged FedAvg-style."""

    rules = BaselineRules(generators="device", discriminators="device", plain_mean_edges=False,
                          fedavg=True, traffic="models")


class RegCGAN(Baseline, LabelRelatedGAN):
    """Centralized RegCGAN: one domain-conditional G and D on all data, with the L_inv regulariser and
    no domain classifier. Mao & Li's second regulariser (the discriminator's last hidden layer made
    similar for the paired images, their Fig. 1(d)) is not part of the method (docs/method.md) and not built."""

    rules = BaselineRules(generators="single", discriminators="single", plain_mean_edges=True,
                          fedavg=False, traffic="none", lambda_inv=True)


class FedCGAN(Baseline, LabelRelatedGAN):
    """A FedAvg domain-conditional GAN: every device trains a full cGAN; the cloud averages them."""

    rules = BaselineRules(generators="device", discriminators="device", plain_mean_edges=False,
                          fedavg=True, traffic="models")
