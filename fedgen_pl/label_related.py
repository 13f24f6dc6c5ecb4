"""The label-related scenario's model (docs/method.md §7): communities share the classes but not the
domain (MNIST / inverse MNIST), and the global generator must draw the same class in every domain from
the same latent vector.

- G_k(z, c_k) and D_kj(x | c_k) are conditional on the one-hot domain code c_k of community k only; no
  class label is given, so z must carry the class.
- The cloud's domain classifier C is trained ``classifier_steps`` per round on {(G(z, c_k), k)} and sent
  down, frozen, with G.
- Every edge adds lambda_inv * L_inv + lambda_spe * L_spe to its generator loss at every local step but
  the very first of training: L_inv = sum over domain pairs of the batch-mean L2 distance between
  first-layer outputs G1(z, c_k) and G1(z, c_k') for the same z; L_spe = sum_k CE(C(G(z, c_k)), k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fedgen_pl.errors import ConfigError
from fedgen_pl.federation import FederationModule
from fedgen_pl.networks import DCGANDiscriminator, DomainClassifier, DomainDCGANGenerator
from fedgen_pl.system import FederatedGAN


def invariance_loss(first_layer: Tensor) -> Tensor:
    """L_inv from first-layer outputs ``[..., D, B, F]`` (D domains, same z across them): the sum over
    unordered domain pairs of the batch-mean (unsquared) L2 distance. Returns shape ``[...]``."""
    num_domains = first_layer.shape[-3]
    total = first_layer.new_zeros(first_layer.shape[:-3])
    for a in range(num_domains):
        for b in range(a + 1, num_domains):
            total = total + (first_layer[..., a, :, :] - first_layer[..., b, :, :]).norm(dim=-1).mean(-1)
    return total


class LabelRelatedGAN(FederatedGAN):
    @classmethod
    def check_config(cls, cfg) -> None:
        FederationModule.check_config.__func__(cls, cfg)          # no class labels: the class-label keys stay default
        if cfg.data.label_space != "shared":
            raise ConfigError(f"the label-related model ({cfg.model.name}) needs label_space=shared (the same "
                              f"classes in every domain)", where="data.label_space")

    def __init__(self, config: dict, spec: dict):
        super().__init__(config, spec)
        self.domain_classifier = DomainClassifier(self.spec.data_shape, self.num_communities)

    # -- variant hooks -------------------------------------------------------------------------------
    def build_generator(self):
        m = self.cfg.model
        return DomainDCGANGenerator(m.latent_dim, self.spec.data_shape, self.spec.num_communities, m.g_channels,
                                    m.g_norm, m.domain_conditioning, m.film_output_gain_init, m.film_output_shift,
                                    m.film_output_gain_scale)

    @staticmethod
    def discriminator_for(model_cfg, spec):
        return DCGANDiscriminator(spec.data_shape, spec.num_communities, model_cfg.d_channels, model_cfg.d_features)

    @staticmethod
    def real_labels_for_discriminator(labels: Tensor, community: int) -> Tensor:
        return torch.full_like(labels, community)          # the device's domain code

    def conditioning(self, real_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every device's samples, real and generated, carry its community's domain code."""
        domain = self.community_of_device[:, None].expand_as(real_y)
        return domain, domain, domain

    def configure_optimizers(self):
        opt_g, opt_d = super().configure_optimizers()
        m = self.cfg.model
        opt_c = torch.optim.Adam(self.domain_classifier.parameters(), lr=m.classifier_lr, betas=(0.5, 0.999))
        return [opt_g, opt_d, opt_c]

    def _paired_inputs(self, batch: int, leading: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        """The same z for every domain: z ``[*leading, K*batch, d]`` and domain codes ``[*leading, K*batch]``."""
        K, rng = self.num_communities, self.generator_rng()
        z = torch.randn(*leading, 1, batch, self.cfg.model.latent_dim, generator=rng, device=self.device)
        z = z.expand(*leading, K, batch, -1).reshape(*leading, K * batch, -1)
        codes = torch.arange(K, device=self.device).repeat_interleave(batch).expand(*leading, K * batch)
        return z, codes

    def frozen_classifier(self, images: Tensor) -> Tensor:
        params = {name: p.detach() for name, p in self.domain_classifier.named_parameters()}
        return functional_call(self.domain_classifier, params, (images,))

    @property
    def lambdas(self) -> tuple[float, float]:
        """(lambda_inv, lambda_spe): the weights of L_inv and L_spe in the edges' generator loss."""
        return float(self.cfg.model.lambda_inv), float(self.cfg.model.lambda_spe)

    def edge_regularizer(self, updating: Tensor) -> Tensor | None:
        m = self.cfg.model
        lambda_inv, lambda_spe = self.lambdas
        if self.iteration == 0 or (lambda_inv == 0 and lambda_spe == 0):
            return None
        G, K, B = self.num_generators, self.num_communities, m.regularizer_batch
        z, codes = self._paired_inputs(B, leading=(G,))      # one draw per edge generator, all K domains
        per_edge = torch.zeros(G, device=self.device)
        if lambda_inv:
            first = self.community_generators(z, codes, first_layer=True)      # [G, K*B, F]
            per_edge = per_edge + lambda_inv * invariance_loss(first.view(G, K, B, -1))
        if lambda_spe:
            images = self.community_generators(z, codes)                      # [G, K*B, C, H, W]
            logits = self.frozen_classifier(images.flatten(0, 1))
            ce = F.cross_entropy(logits, codes.flatten(), reduction="none").view(G, K, B)
            per_edge = per_edge + lambda_spe * ce.mean(-1).sum(-1)
        return (per_edge * updating.to(per_edge.dtype)).sum()

    # -- the cloud -----------------------------------------------------------------------------------
    def round_end_hooks(self) -> list:
        """The cloud trains C on the new global generator and sends it down with G."""
        return [*super().round_end_hooks(), type(self).train_domain_classifier]

    def count_round_bytes(self) -> None:
        super().count_round_bytes()        # and C goes down with G
        classifier_bytes = sum(p.numel() * p.element_size() for p in self.domain_classifier.parameters())
        self.bytes["cloud_to_edge"] += self.num_generators * classifier_bytes

    def train_domain_classifier(self) -> list[float]:
        """``classifier_steps`` cross-entropy steps of C on {(G(z, c_k), k)}; returns the losses."""
        opt_c = self.optimizers()[2] if self._trainer is not None else self._standalone_classifier_optimizer()
        losses = []
        with torch.enable_grad():
            for _ in range(self.cfg.model.classifier_steps):
                z, codes = self._paired_inputs(self.cfg.model.regularizer_batch)
                with torch.no_grad():
                    images = self.global_generator(z, codes)
                loss = F.cross_entropy(self.domain_classifier(images), codes)
                opt_c.zero_grad(set_to_none=True)
                self._backward(loss)
                opt_c.step()
                losses.append(loss.detach())
        return [float(v) for v in losses]

    def _standalone_classifier_optimizer(self):
        if not hasattr(self, "_opt_c"):
            self._opt_c = self.configure_optimizers()[2]
        return self._opt_c

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator, domains: Tensor | None = None) -> Tensor:
        """G(z, c_domain); class ``labels`` are not an input of this generator (z carries the class)."""
        if domains is None:
            raise ValueError("the label-related generator needs the domain of every sample")
        z = torch.randn(len(domains), self.cfg.model.latent_dim, generator=generator, device=domains.device)
        return self.global_generator(z, domains)

    @torch.no_grad()
    def paired_samples(self, n: int, generator: torch.Generator) -> Tensor:
        """G(z_i, c_k) for n latent vectors and every domain: ``[K, n, C, H, W]``."""
        K = self.num_communities
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator, device=self.device)
        codes = torch.arange(K, device=self.device).repeat_interleave(n)
        return self.global_generator(z.repeat(K, 1), codes).view(K, n, *self.spec.data_shape)
