"""The federated GAN as one LightningModule (docs/method.md §1-§10), composed from a recipe row (recipes.py).

Tiers and where they live:
- device discriminators D_kj: ``device_discriminators``, one ``StackedModule`` over the discriminators;
- edge community generators G_k: ``community_generators``, one ``StackedModule`` over the generators;
- cloud global generator G: ``global_generator``, a plain module updated only by aggregation.

Time is simulated by the virtual clock (``Federation.step``): an edge *dispatches* generated samples to a
device (kept as that device's in-flight work), and the device's feedback arrives some ticks later. A
training step is one clock event, ``local_update``, which reads like method §2:

1. gather the devices whose feedback arrives, and their in-flight work;
2. each updates D_kj and feeds back L_kj and d l_kj / d G_k(z_g) (``tiers.device_iteration``, batched);
3. each edge weighs its devices' feedback (Eq. 4 or 5) and steps G_k through its regenerated samples.

All of it runs vectorised over devices and communities. When the clock completes a round, the training
step calls ``end_round``: the cloud aggregates the G_k into G (Eq. 1 or FedAvg) and sends it down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedgen_pl import label_related
from fedgen_pl.aggregation import (async_edge_weights, community_losses, fedavg_average, get_aggregation,
                                   segment_sum, sync_edge_weights)
from fedgen_pl.config import cloud_lr
from fedgen_pl.federation import FederationModule, Grouping
from fedgen_pl.networks import build_discriminator, build_generator
from fedgen_pl.optim import StackedAdam
from fedgen_pl.privacy import sanitize_feedback
from fedgen_pl.stacked import StackedModule
from fedgen_pl.tiers import device_iteration, edge_generator_loss, finite_rows, zero_rows


INFLIGHT = ("real_x", "real_y", "z_d", "y_d", "fake_d", "z_g", "y_g", "fake_g")


@dataclass
class LocalBatch:
    """One dispatch per device (leading dim N, then batch B): the device's real batch, the latents and
    labels the edge drew, and the samples it generated from them."""

    real_x: Tensor
    real_y: Tensor
    z_d: Tensor          # latents for the discriminator update ...
    y_d: Tensor          # ... their labels (class labels or domain codes)
    fake_d: Tensor       # ... and G_k(z_d, y_d) at dispatch
    z_g: Tensor          # latents for the generator update ...
    y_g: Tensor
    fake_g: Tensor | None  # ... and G_k(z_g, y_g) at dispatch (kept only when ``stores_fake_g``)

    def rows(self, devices: Tensor | None) -> "LocalBatch":
        """The work of ``devices`` only (int ``[n]``; None: every device)."""
        if devices is None:
            return self
        return LocalBatch(*(None if t is None else t[devices] for t in (getattr(self, n) for n in INFLIGHT)))


@dataclass
class DeviceFeedback:
    """What the devices of a local iteration send back, over all N devices (0 where not usable)."""

    usable: Tensor       # [N] bool: arrived, D_kj stepped, L_kj and the feedback finite (M_k)
    d_loss: Tensor       # [N] D_kj's GAN loss before its step (the R1 penalty apart)
    device_loss: Tensor  # [N] L_kj with the updated D_kj
    feedback: Tensor     # [n, B, *shape] d l_kj / d G_k(z_g) of the computed devices, 0 where not usable
    r1_penalty: Tensor   # [N] E ||grad_x D_kj(x)||^2 on the real batch (0 without model.r1_gamma)


@dataclass
class StepStats:
    arrived: Tensor      # [N] bool: devices whose feedback was used (M_k, without non-finite ones)
    d_loss: Tensor       # [N] discriminator GAN loss before its step (0 where not arrived)
    device_loss: Tensor  # [N] L_kj = E[log(1 - D_kj(G_k(z_g)))] with the updated D_kj
    edge_weights: Tensor  # [N] w_kj (0 where not arrived)
    staleness: Tensor    # [N] G_k updates since the device's work was dispatched
    r1_penalty: Tensor   # [N] the R1 penalty's E ||grad_x D_kj(x)||^2 (0 where not arrived or off)


class FederatedGAN(FederationModule):
    # Where the devices' side of a local iteration runs: None = here, batched (the in-process engine);
    # an object with ``feedback(module, work, fake_g, arrived, devices) -> tiers.DeviceStep``
    # = elsewhere (its ``clock_for(module)`` replaces the virtual clock; fedgen_pl/flower/).
    device_transport = None
    subset_compute = True     # an event computes only the devices that reported (False: all of them, masked)

    def __init__(self, config: dict, spec: dict):
        super().__init__(config, spec)
        recipe = self.recipe
        N, K, m = self.num_devices, self.num_generators, self.cfg.model
        self.discriminators = Grouping(self.federation.device_groups[recipe.discriminators])

        self.global_generator = build_generator(m, self.spec, recipe.conditioning)
        execution, compile_mode = self.cfg.trainer.member_execution, self.cfg.trainer.compile
        self.community_generators = StackedModule(self.global_generator, K, execution,   # G_k <- G at the start
                                                  compile_mode=compile_mode)
        self.device_discriminators = StackedModule([build_discriminator(m, self.spec, recipe.conditioning)
                                                    for _ in range(self.discriminators.num_groups)], execution=execution,
                                                   compile_mode=compile_mode)
        if "train_domain_classifier" in recipe.round_end:     # the cloud's C (label-related, method §7)
            self.domain_classifier = label_related.DomainClassifier(self.spec.data_shape, self.num_communities)
        # A shared discriminator sees the mean of its devices' losses.
        share = 1.0 / torch.tensor(self.discriminators.sizes, dtype=torch.float32)[self.discriminators.group]
        self.register_buffer("discriminator_share", share, persistent=False)

        # The cloud: the configured rule, or FedAvg (with one generator: G <- G_1; cloud_lr 1, tau unused).
        f = self.cfg.federation
        self.cloud = (f.aggregation, float(f.tau_cloud), cloud_lr(self.cfg)) if recipe.cloud == "configured" \
            else ("fedavg", 0.0, 1.0)

        # In-flight work of every device (persistent: a resumed run continues the same dispatches).
        B, shape, z = self.cfg.data.batch_size, self.spec.data_shape, m.latent_dim
        for name, dims, dtype in (("real_x", shape, torch.float32), ("real_y", (), torch.long),
                                  ("z_d", (z,), torch.float32), ("y_d", (), torch.long),
                                  ("fake_d", shape, torch.float32), ("z_g", (z,), torch.float32),
                                  ("y_g", (), torch.long), ("fake_g", shape, torch.float32)):
            self.register_buffer(f"inflight_{name}", torch.zeros(N, B, *dims, dtype=dtype))
        self.register_buffer("dispatch_version", torch.zeros(N, dtype=torch.long))
        self.register_buffer("previous_staleness", torch.zeros(N))  # for the optional D lr scaling

    def configure_optimizers(self):
        m = self.cfg.model
        betas = (m.beta1, m.beta2)
        opt_g = StackedAdam(self.community_generators.parameters(), self.num_generators, lr=m.g_lr, betas=betas)
        opt_d = StackedAdam(self.device_discriminators.parameters(), self.discriminators.num_groups, lr=m.d_lr,
                            betas=betas)
        if not hasattr(self, "domain_classifier"):
            return [opt_g, opt_d]
        return [opt_g, opt_d, torch.optim.Adam(self.domain_classifier.parameters(), lr=m.classifier_lr,
                                               betas=(0.5, 0.999))]

    def attach_data(self, datamodule) -> None:
        super().attach_data(datamodule)
        # Labels each discriminator holds data for (a shared one: those of all its devices), per device.
        histogram, group = self.data.label_histogram, self.discriminators.group.to(self.device)
        held = histogram.new_zeros(self.discriminators.num_groups, histogram.shape[1]).index_add(0, group, histogram)
        self.held_labels = (held > 0)[group]
        self.remember_discriminators()      # training starts (or resumes, between rounds) from here

    # -- the networks, batched over devices --------------------------------------------------------
    def generate(self, z: Tensor, labels: Tensor, devices: Tensor | None = None) -> Tensor:
        """Each device's samples from its generator: z ``[N, B, d]`` -> ``[N, B, *shape]``; with
        ``devices`` (int ``[n]``) only those devices, inputs ``[n, B, ...]``."""
        if devices is not None:
            return self.community_generators(z, labels, members=self.federation.generators.group[devices])
        layout = self.federation.generators
        out = self.community_generators(layout.to_members(z), layout.to_members(labels))
        return layout.from_members(out, z.shape[1])

    def discriminate(self, x: Tensor, labels: Tensor, frozen: bool = False, devices: Tensor | None = None) -> Tensor:
        """Each device's logits from its discriminator: x ``[N, B, *shape]`` -> ``[N, B]``; with
        ``devices`` only those devices."""
        if devices is not None:
            return self.device_discriminators(x, labels, frozen=frozen, members=self.discriminators.group[devices])
        layout = self.discriminators
        out = self.device_discriminators(layout.to_members(x), layout.to_members(labels), frozen=frozen)
        return layout.from_members(out, x.shape[1])

    def judged(self, labels: Tensor, devices: Tensor | None) -> Tensor | None:
        """Which generated samples each device's discriminator judges (``model.unheld_label_fakes``):
        ``None`` = all; with ``skip``, a float mask ``[n, B]`` that leaves out labels it holds no data for."""
        if self.cfg.model.unheld_label_fakes == "judge":
            return None
        held = self.held_labels if devices is None else self.held_labels[devices]
        return held.gather(1, labels).to(torch.float32)

    # -- the edge: generating and dispatching ----------------------------------------------------
    def draw_batch(self) -> LocalBatch:
        """A fresh dispatch for every device: its real batch, the latents and their labels: class labels
        drawn as ``federation.fake_labels`` says (method §6), or every sample's domain code (method §7)."""
        rng, B = self.generator_rng(), self.cfg.data.batch_size
        real_x, real_y = self.data.sample_real(B, rng)
        if self.recipe.conditioning == "domain":
            real_y = y_d = y_g = self.federation.community_of_device[:, None].expand_as(real_y)
        else:
            scope = self.fake_label_scope
            y_d, y_g = self.data.sample_fake_labels(B, rng, scope), self.data.sample_fake_labels(B, rng, scope)
        z_shape = (self.num_devices, B, self.cfg.model.latent_dim)
        z_d = torch.randn(z_shape, generator=rng, device=self.device)
        z_g = torch.randn(z_shape, generator=rng, device=self.device)
        return LocalBatch(real_x, real_y, z_d, y_d, None, z_g, y_g, None)

    @property
    def fake_label_scope(self) -> str:
        """``device`` (each device's own histogram) or, for ``fake_labels=community``, the labels of the
        device's community (``pooled``: of every device, where one discriminator sees all data)."""
        if self.cfg.federation.fake_labels == "device":
            return "device"
        return "pooled" if self.recipe.discriminators == "single" else "community"

    @property
    def stores_fake_g(self) -> bool:
        """Whether G_k(z_g) as dispatched must be kept: only when G_k may change before the feedback
        arrives (async). In sync mode a device's work always comes from the current G_k (an edge updates
        only when all its devices reported or were given up), so the edge's regeneration of G_k(z_g) at
        feedback time is the very tensor it sent, and is computed once, with gradients."""
        return self.federation.asynchronous

    def inflight(self) -> LocalBatch:
        return LocalBatch(*(getattr(self, f"inflight_{name}") for name in INFLIGHT))

    @torch.no_grad()
    def dispatch(self, devices: np.ndarray) -> np.ndarray:
        """Send fresh work (generated samples) to ``devices``; those offline are skipped by the clock."""
        sent = self.federation.clock.dispatch(devices)
        if not sent.any():
            return sent
        batch = self.draw_batch()      # drawn for every device: the random stream does not depend on who is sent
        mask = torch.from_numpy(sent).to(self.device)
        chosen = None if sent.all() else torch.from_numpy(np.flatnonzero(sent)).to(self.device)
        work = batch.rows(chosen)
        work.fake_d = self.generate(work.z_d, work.y_d, chosen)
        if self.stores_fake_g:
            work.fake_g = self.generate(work.z_g, work.y_g, chosen)
        for name in INFLIGHT:
            target, value = getattr(self, f"inflight_{name}"), getattr(work, name)
            if value is None:
                continue
            if chosen is None:
                target.copy_(value)
            else:      # the buffers keep their dtype: samples generated under bf16 autocast are stored as fp32
                target.index_copy_(0, chosen, value.to(target.dtype))
        group = self.federation.generators.group
        self.dispatch_version.copy_(torch.where(mask, self.federation.generator_version[group], self.dispatch_version))
        self.bytes["edge_to_device"] += int(sent.sum()) * self.sample_bytes("dispatch")
        return sent

    def sample_bytes(self, direction: str) -> int:
        """Per device and iteration, with sample traffic: edge -> device (``dispatch``) two generated batches
        (float32) and their labels (int64); device -> edge (``feedback``) L_kj and the gradient w.r.t. the
        generated batch (float32). Nothing without it."""
        if self.recipe.traffic != "samples":
            return 0
        B, numel = self.cfg.data.batch_size, int(np.prod(self.spec.data_shape))
        return 2 * B * numel * 4 + 2 * B * 8 if direction == "dispatch" else 4 + B * numel * 4

    # -- one clock event: method §2 --------------------------------------------------------------
    def local_update(self, event, optimizers: list) -> StepStats:
        """The devices whose feedback arrives train and feed back; their edges update."""
        opt_g, opt_d = optimizers[:2]
        arrived = torch.from_numpy(event.arrived).to(self.device)
        updating = torch.from_numpy(event.updating).to(self.device)
        # 1. Gather the devices that report (all of them: no gather) and their work.
        devices = None if event.arrived.all() or not self.subset_compute else arrived.nonzero().flatten()
        work = self.inflight().rows(devices)
        group = self.federation.generators.group
        staleness = (self.federation.generator_version[group] - self.dispatch_version).clamp(min=0)
        # The edge's G_k(z_g), with grad: in sync mode also the very samples the devices judge.
        regenerated = self.generate(work.z_g, work.y_g, devices)
        fake_g = (work.fake_g if self.stores_fake_g else regenerated).detach()

        # 2. The devices: D_kj steps, then L_kj and the feedback (here, or over the network).
        reply = self.device_feedback(work, fake_g, arrived, devices, opt_d)

        # 3. The edges weigh the usable feedback and update G_k through the regenerated samples.
        weights = self.edge_update(regenerated, reply, arrived, updating, staleness, devices, opt_g,
                                   bool(event.updating.all()))
        self.bytes["device_to_edge"] += int(event.arrived.sum()) * self.sample_bytes("feedback")
        return StepStats(reply.usable, reply.d_loss, reply.device_loss, weights, staleness, reply.r1_penalty)

    def device_feedback(self, work: LocalBatch, fake_g: Tensor, arrived: Tensor, devices: Tensor | None,
                        opt_d) -> DeviceFeedback:
        """The devices' side (``tiers.device_iteration`` over the rows of ``devices``, or a transport), and the
        one non-finite guard: a device whose D step, L_kj or feedback is not finite sends nothing usable."""
        N = self.num_devices

        def spread(values: Tensor) -> Tensor:    # [n] for the computed devices -> [N], 0 elsewhere
            return values if devices is None else values.new_zeros(N).index_copy(0, devices, values)

        if self.device_transport is not None:
            d_loss, device_loss, feedback, stepped, penalty = self.device_transport.feedback(
                self, work, fake_g, arrived, devices)
        else:
            d_loss, device_loss, feedback, stepped, penalty = device_iteration(
                lambda x, labels, frozen: self.discriminate(x, labels, frozen, devices),
                lambda loss: self.step_discriminators(loss, arrived, devices, opt_d),
                work.real_x, work.real_y, work.fake_d, work.y_d, fake_g, work.y_g, self.generator_objective(),
                self.judged(work.y_d, devices), self.judged(work.y_g, devices), self.cfg.model.instance_noise,
                self.federation.rng(self.device), self.cfg.model.r1_gamma)
            if self.privacy is not None and self.privacy.mechanism == "feedback":   # what leaves a device (privacy.py)
                p = self.privacy
                device_loss, feedback = sanitize_feedback(device_loss, feedback, p.clip, p.loss_bound,
                                                          p.noise_multiplier, self.federation.rng(self.device))
        usable = stepped & spread(finite_rows(device_loss, feedback).to(torch.float32)).bool()
        feedback = zero_rows(feedback, usable if devices is None else usable[devices])
        zero = torch.zeros(N, device=self.device)
        return DeviceFeedback(usable, torch.where(usable, spread(d_loss.detach()), zero),
                              torch.where(usable, spread(device_loss.detach()), zero), feedback,
                              torch.where(usable, spread(penalty.detach()), zero))

    def generator_objective(self) -> str:
        """``model.gan_loss``, but non-saturating during the first ``model.non_saturating_warmup`` rounds."""
        if self.federation.round < self.cfg.model.non_saturating_warmup:
            return "non_saturating"
        return self.cfg.model.gan_loss

    def step_discriminators(self, d_loss: Tensor, arrived: Tensor, devices: Tensor | None, opt_d) -> Tensor:
        """Backward of the devices' discriminator losses and one Adam step of every discriminator with a
        reporting device and finite loss and gradients; returns bool ``[N]``: the devices whose D stepped."""
        N, d_group, num_d = self.num_devices, self.discriminators.group, self.discriminators.num_groups
        opt_d.zero_grad(set_to_none=True)
        mask = arrived.to(torch.float32)
        share = self.discriminator_share if devices is None else self.discriminator_share[devices]
        self.backprop((d_loss * (share * (mask if devices is None else 1.0))).sum())
        lr_scale = None
        if self.federation.asynchronous and self.cfg.clock.lr_scale and self.recipe.discriminators == "device":
            # Journal rule: stragglers take larger steps, exp(staleness of their previous feedback), capped.
            lr_scale = self.previous_staleness.exp().clamp(max=self.cfg.clock.max_lr_scale)
        finite = torch.isfinite(d_loss.detach()).to(mask.dtype)
        if devices is not None:
            finite = finite.new_zeros(N).index_copy(0, devices, finite)
        bad_loss = arrived & ~finite.bool()
        d_step = ((segment_sum(mask, d_group, num_d) > 0) & self.device_discriminators.finite_grads()
                  & ~(segment_sum(bad_loss.to(mask.dtype), d_group, num_d) > 0))
        opt_d.step(active=None if bool(d_step.all()) else d_step, lr_scale=lr_scale)
        return arrived & d_step[d_group]

    def edge_update(self, regenerated: Tensor, reply: DeviceFeedback, arrived: Tensor, updating: Tensor,
                    staleness: Tensor, devices: Tensor | None, opt_g, all_updating: bool) -> Tensor:
        """The edges' side: weights w_kj over the usable feedback (the recipe's edge rule), the surrogate loss
        through the regenerated samples (plus the recipe's regulariser), one step of every updating G_k with
        a finite gradient; returns the weights."""
        K, edge, usable = self.num_generators, self.federation.generators.group, reply.usable
        if self.recipe.edge_rule == "plain_mean":
            weights = sync_edge_weights(reply.device_loss, edge, K, 0.0, usable)
        elif self.federation.asynchronous:
            weights = async_edge_weights(staleness, usable, edge, K)
        else:
            weights = sync_edge_weights(reply.device_loss, edge, K, self.cfg.federation.tau_edge, usable)
        g_loss = edge_generator_loss(regenerated, weights if devices is None else weights[devices], reply.feedback)
        extra = label_related.edge_regulariser(self, updating) if self.recipe.regulariser and self.iteration else None
        if extra is not None:
            g_loss = g_loss + extra
        opt_g.zero_grad(set_to_none=True)
        self.backprop(g_loss)
        g_step = (updating & (segment_sum(usable.to(torch.float32), edge, K) > 0)
                  & self.community_generators.finite_grads())
        clear = bool(((usable == arrived).all() & (g_step == updating).all()))    # the one host sync here
        if not clear:
            self.federation.report_nonfinite(arrived & ~usable, updating & ~g_step)
        # ``all_updating`` comes from the clock (host): with nothing skipped, g_step == updating, no second sync
        opt_g.step(active=None if clear and all_updating else g_step)

        with torch.no_grad():
            self.previous_staleness.copy_(torch.where(usable, staleness.float(), self.previous_staleness))
            # L*_k counts only the steps G_k took (a step skipped as non-finite adds nothing)
            self.federation.record_updates(g_step, community_losses(weights, reply.device_loss, edge, K))
        return weights

    def step_metrics(self, stats: StepStats) -> dict:
        count = stats.arrived.sum().clamp(min=1)
        logged = {
            "train/d_loss": stats.d_loss.sum() / count,
            "train/device_loss": stats.device_loss.sum() / count,
            "train/edge_weight_max": stats.edge_weights.max(),
            "train/staleness_mean": (stats.staleness * stats.arrived).sum() / count,
        }
        if self.cfg.model.r1_gamma:
            logged["train/r1_penalty"] = stats.r1_penalty.sum() / count
        return logged

    # -- the cloud: one round ------------------------------------------------------------------------
    @torch.no_grad()
    def end_round(self) -> dict:
        """Aggregate the G_k into G (the recipe's cloud rule over the members that took part), send G down,
        start the next round, then the recipe's round-end steps. Returns the round's record."""
        rule, tau_cloud, lr = self.cloud
        global_state = dict(self.global_generator.state_dict())
        sent = self.community_generators.stacked_state()      # every G_k started the round from G:
        sent = self.sanitized_updates(sent, {k: v.unsqueeze(0).expand_as(sent[k]) for k, v in global_state.items()})
        new_state, record = self.aggregate_round(get_aggregation(rule), tau_cloud, lr, global_state, sent)
        self.global_generator.load_state_dict(new_state)
        self.community_generators.broadcast(dict(self.global_generator.state_dict()))
        self.close_round(self.round_bytes())
        for step in self.recipe.round_end:
            if step == "average_discriminators":
                self.average_discriminators()
            else:
                label_related.train_domain_classifier(self)
        return {"round": self.round, **record}

    def average_discriminators(self) -> None:
        """FedAvg of the device discriminators by sample counts, directly or through the edges
        (``federation.fedavg_via_edges``)."""
        counts = torch.tensor(self.spec.device_sample_counts, device=self.device)
        via_edges = self.cfg.federation.fedavg_via_edges
        sent = self.device_discriminators.stacked_state()
        if self.privacy is not None:
            sent = self.sanitized_updates(sent, self.discriminators_at_round_start)
        averaged = fedavg_average(sent, counts, self.federation.community_of_device if via_edges else None,
                                  self.num_communities)
        self.device_discriminators.broadcast(averaged)
        self.remember_discriminators()

    def remember_discriminators(self) -> None:
        """DP-FedAvg needs where each D started the round (the devices' first D differ; checkpoints are
        written between rounds, so a resumed run starts from what it loads). Called by ``attach_data``
        (training starts) and after every average."""
        if self.privacy is not None and "average_discriminators" in self.recipe.round_end:
            self.discriminators_at_round_start = {k: v.clone() for k, v in
                                                  self.device_discriminators.stacked_state().items()}

    def round_bytes(self) -> dict[str, int]:
        """The round's traffic. Three tiers: every edge sends G_k and L*_k up and receives G (and C, when the
        cloud trains one). FedAvg (``models``): every device sends its G and D up and gets the averages back;
        via the edges, only the K edge averages travel between edge and cloud. Otherwise (one generator)
        nothing moves at a round's end."""
        generator = sum(t.numel() * t.element_size() for t in self.global_generator.state_dict().values())
        K = self.num_generators
        if self.recipe.traffic == "models":
            model = generator + sum(t[0].numel() * t.element_size()
                                    for t in self.device_discriminators.stacked_state().values())
            hops = self.num_communities if self.cfg.federation.fedavg_via_edges else self.num_devices
            return {"device_to_edge": self.num_devices * model, "edge_to_device": self.num_devices * model,
                    "edge_to_cloud": hops * model, "cloud_to_edge": hops * model}
        if self.recipe.baseline:
            return {}
        classifier = sum(p.numel() * p.element_size() for p in self.domain_classifier.parameters()) \
            if hasattr(self, "domain_classifier") else 0
        return {"edge_to_cloud": K * (generator + 4), "cloud_to_edge": K * (generator + classifier)}

    def global_model(self) -> nn.Module:
        return self.global_generator

    # -- sampling for evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator, domains: Tensor | None = None) -> Tensor:
        """Samples of the global generator G for the given class labels (ignored when unconditional), or,
        domain-conditional, for the given ``domains`` (community indices; z carries the class)."""
        if self.recipe.conditioning == "domain":
            if domains is None:
                raise ValueError("the label-related generator needs the domain of every sample")
            labels = domains
        z = torch.randn(len(labels), self.cfg.model.latent_dim, generator=generator, device=labels.device)
        return self.global_generator(z, labels)

    @torch.no_grad()
    def paired_samples(self, n: int, generator: torch.Generator) -> Tensor:
        """Domain-conditional: G(z_i, c_k) for n latent vectors and every domain, ``[K, n, C, H, W]``."""
        K = self.num_communities
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator, device=self.device)
        codes = torch.arange(K, device=self.device).repeat_interleave(n)
        return self.global_generator(z.repeat(K, 1), codes).view(K, n, *self.spec.data_shape)
