"""The three-tier federated GAN as one LightningModule (docs/method.md §1, §2, §3-§10).

Tiers and where they live:
- device discriminators D_kj: ``device_discriminators``, one ``StackedModule`` over all N devices;
- edge community generators G_k: ``community_generators``, one ``StackedModule`` over K communities;
- cloud global generator G: ``global_generator``, a plain module updated only by aggregation.

Time is simulated by ``VirtualClock``: an edge *dispatches* generated samples to a device (stored as
that device's in-flight work), and the device's feedback arrives some ticks later. A training step is
one clock event: every device whose feedback arrives updates its discriminator on the work it was
sent, returns L_kj and the gradient of its generator objective with respect to the generated batch
(§5.3), and its edge regenerates G_k(z_g) from the stored latents and applies the weighted feedback.
All of it runs vectorised over devices and communities, idle ones masked. In sync mode with every
device reporting, a step is exactly one local iteration of every community. The global aggregation
at the end of a round is done by ``callbacks.GlobalAggregation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from fedgen_pl.aggregation import (
    async_edge_weights, community_losses, segment_sum, sync_edge_weights,
)
from fedgen_pl.errors import ConfigError
from fedgen_pl.federation import FederationModule, Grouping
from fedgen_pl.networks import build_discriminator, build_generator
from fedgen_pl.optim import StackedAdam
from fedgen_pl.stacked import StackedModule
from fedgen_pl.tiers import (device_losses, discriminator_loss, edge_generator_loss, finite_rows, sample_feedback,
                             zero_rows)

INFLIGHT = ("real_x", "real_y", "z_d", "y_d", "fake_d", "z_g", "y_g", "fake_g")


@dataclass
class LocalBatch:
    """One dispatch per device (leading dim N, then batch B): the device's real batch, the latents and
    labels the edge drew, and the samples it generated from them."""

    real_x: Tensor
    real_y: Tensor
    z_d: Tensor          # latents for the discriminator update ...
    y_d: Tensor          # ... their labels, from each device's label histogram
    fake_d: Tensor       # ... and G_k(z_d, y_d) at dispatch
    z_g: Tensor          # latents for the generator update ...
    y_g: Tensor
    fake_g: Tensor | None  # ... and G_k(z_g, y_g) at dispatch (kept only when ``stores_fake_g``)


@dataclass
class DeviceReply:
    """What the devices of a local iteration send back (rows: the computed devices, ``[n, ...]``)."""

    d_loss: Tensor       # [n] D_kj's loss before its step
    device_loss: Tensor  # [n] L_kj with the updated D_kj
    feedback: Tensor     # [n, B, *shape] d l_kj / d G_k(z_g)
    stepped: Tensor      # [N] bool: arrived, and D_kj took its step (finite loss and gradients)


@dataclass
class StepStats:
    arrived: Tensor      # [N] bool: devices whose feedback was used (M_k, without non-finite ones)
    d_loss: Tensor       # [N] discriminator loss before its step (0 where not arrived)
    device_loss: Tensor  # [N] L_kj = E[log(1 - D_kj(G_k(z_g)))] with the updated D_kj
    edge_weights: Tensor  # [N] w_kj (0 where not arrived)
    staleness: Tensor    # [N] G_k updates since the device's work was dispatched


class FederatedGAN(FederationModule):
    # Which network serves which device: one generator per community (its edge) and one
    # discriminator per device. Baselines (fedgen_pl/baselines.py) change these.
    generator_groups = "community"       # community | single | device
    discriminator_groups = "device"      # device | single
    subset_compute = True                # an event computes only the devices that reported (False: all, masked)
    # Where the devices' side of a local iteration runs: None = here, batched (the in-process engine);
    # an object with ``feedback(module, work, fake_g, arrived, devices) -> DeviceReply`` = elsewhere (its
    # ``clock_for(module)`` replaces the virtual clock; fedgen_pl/flower_app.py).
    device_transport = None

    @classmethod
    def check_config(cls, cfg) -> None:
        for key, default in cls.CLASS_LABEL_KEYS.items():
            value = OmegaConf.select(cfg, key)
            if value != default and not cfg.model.conditional:
                raise ConfigError(f"'{value}' needs class-conditional networks (model.conditional=true)", where=key)

    def __init__(self, config: dict, spec: dict):
        super().__init__(config, spec)
        N, K, model_cfg = self.num_devices, self.num_generators, self.cfg.model
        self.discriminators = Grouping(self.device_groups[self.discriminator_groups])

        self.global_generator = self.build_generator()
        execution = self.cfg.trainer.member_execution
        compile_mode = self.cfg.trainer.compile
        self.community_generators = StackedModule(self.global_generator, K, execution,   # G_k <- G at the start
                                                  compile_mode=compile_mode)
        self.device_discriminators = StackedModule([self.build_discriminator()
                                                    for _ in range(self.discriminators.num_groups)], execution=execution,
                                                   compile_mode=compile_mode)
        # A shared discriminator sees the mean of its devices' losses.
        share = 1.0 / torch.tensor(self.discriminators.sizes, dtype=torch.float32)[self.discriminators.group]
        self.register_buffer("discriminator_share", share, persistent=False)

        # In-flight work of every device (persistent: a resumed run continues the same dispatches).
        B, shape, z = self.cfg.data.batch_size, self.spec.data_shape, model_cfg.latent_dim
        for name, dims, dtype in (("real_x", shape, torch.float32), ("real_y", (), torch.long),
                                  ("z_d", (z,), torch.float32), ("y_d", (), torch.long),
                                  ("fake_d", shape, torch.float32), ("z_g", (z,), torch.float32),
                                  ("y_g", (), torch.long), ("fake_g", shape, torch.float32)):
            self.register_buffer(f"inflight_{name}", torch.zeros(N, B, *dims, dtype=dtype))
        self.register_buffer("dispatch_version", torch.zeros(N, dtype=torch.long))
        self.register_buffer("previous_staleness", torch.zeros(N))  # for the optional D lr scaling

    # -- what variants change ----------------------------------------------------------------------
    def build_generator(self):
        return build_generator(self.cfg.model, self.spec)

    def build_discriminator(self):
        return self.discriminator_for(self.cfg.model, self.spec)

    @staticmethod
    def discriminator_for(model_cfg, spec):
        """A device's discriminator (also built on a deployed device, fedgen_pl/flower_app.py)."""
        return build_discriminator(model_cfg, spec)

    @staticmethod
    def real_labels_for_discriminator(labels: Tensor, community: int) -> Tensor:
        """The labels D sees with a device's real batch (``conditioning``'s first output, for one device)."""
        return labels

    def conditioning(self, real_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The labels D sees with the real batch and G and D use for the two generated batches: here the
        class labels, fakes drawn as ``federation.fake_labels`` says (docs/method.md §6)."""
        rng, B = self.generator_rng(), real_y.shape[1]
        scope = self.fake_label_scope
        return real_y, self.data.sample_fake_labels(B, rng, scope), self.data.sample_fake_labels(B, rng, scope)

    @property
    def fake_label_scope(self) -> str:
        """``device`` (each device's own histogram) or, for ``fake_labels=community``, the labels of the
        device's community (``pooled``: of every device, where one discriminator sees all data)."""
        if self.cfg.federation.fake_labels == "device":
            return "device"
        return "pooled" if self.discriminator_groups == "single" else "community"

    def attach_data(self, datamodule) -> None:
        super().attach_data(datamodule)
        # Labels each discriminator holds data for (a shared one: those of all its devices), per device.
        histogram, group = self.data.label_histogram, self.discriminators.group.to(self.device)
        held = histogram.new_zeros(self.discriminators.num_groups, histogram.shape[1]).index_add(0, group, histogram)
        self.held_labels = (held > 0)[group]

    def judged(self, labels: Tensor, devices: Tensor | None) -> Tensor | None:
        """Which generated samples each device's discriminator judges (``model.unheld_label_fakes``):
        ``None`` = all; with ``skip``, a float mask ``[n, B]`` that leaves out labels it holds no data for."""
        if self.cfg.model.unheld_label_fakes == "judge":
            return None
        held = self.held_labels if devices is None else self.held_labels[devices]
        return held.gather(1, labels).to(torch.float32)

    def edge_weights(self, device_loss: Tensor, staleness: Tensor, arrived: Tensor) -> Tensor:
        """w_kj: Eq. 4 (sync) or Eq. 5 (async) within each generator's devices."""
        K, edge = self.num_generators, self.generators.group
        if self.asynchronous:
            return async_edge_weights(staleness, arrived, edge, K)
        return sync_edge_weights(device_loss, edge, K, self.cfg.federation.tau_edge, arrived)

    def edge_regularizer(self, updating: Tensor) -> Tensor | None:
        """An extra term of the community generators' loss (the label-related model's L_inv, L_spe)."""
        return None

    # -- configuration ---------------------------------------------------------------------------
    def configure_optimizers(self):
        m = self.cfg.model
        betas = (m.beta1, m.beta2)
        opt_g = StackedAdam(self.community_generators.parameters(), self.num_generators, lr=m.g_lr, betas=betas)
        opt_d = StackedAdam(self.device_discriminators.parameters(), self.discriminators.num_groups, lr=m.d_lr,
                            betas=betas)
        return [opt_g, opt_d]

    # -- the edge: generating and dispatching ----------------------------------------------------
    def generate(self, z: Tensor, labels: Tensor, devices: Tensor | None = None) -> Tensor:
        """Each device's samples from its generator: z ``[N, B, d]`` -> ``[N, B, *shape]``; with
        ``devices`` (int ``[n]``) only those devices, inputs ``[n, B, ...]``."""
        if devices is not None:
            return self.community_generators(z, labels, members=self.generators.group[devices])
        layout = self.generators
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

    def draw_batch(self) -> LocalBatch:
        """A fresh dispatch for every device: real batch, latents, labels and the generated samples."""
        rng, B = self.generator_rng(), self.cfg.data.batch_size
        real_x, real_y = self.data.sample_real(B, rng)
        real_y, y_d, y_g = self.conditioning(real_y)
        z_shape = (self.num_devices, B, self.cfg.model.latent_dim)
        z_d = torch.randn(z_shape, generator=rng, device=self.device)
        z_g = torch.randn(z_shape, generator=rng, device=self.device)
        return LocalBatch(real_x, real_y, z_d, y_d, None, z_g, y_g, None)

    @property
    def stores_fake_g(self) -> bool:
        """Whether G_k(z_g) as dispatched must be kept: only when G_k may change before the feedback
        arrives (async). In sync mode a device's work always comes from the current G_k (an edge updates
        only when all its devices reported or were given up), so the edge's regeneration of G_k(z_g) at
        feedback time is the very tensor it sent, and is computed once, with gradients."""
        return self.asynchronous

    @torch.no_grad()
    def fill_generated(self, batch: LocalBatch, devices: Tensor | None = None) -> LocalBatch:
        """G_k(z_d) (and G_k(z_g) when stored) for the batch (for ``devices`` only, in their order)."""
        pick = (lambda t: t) if devices is None else (lambda t: t[devices])
        batch.fake_d = self.generate(pick(batch.z_d), pick(batch.y_d), devices)
        if self.stores_fake_g:
            batch.fake_g = self.generate(pick(batch.z_g), pick(batch.y_g), devices)
        return batch

    def inflight(self) -> LocalBatch:
        return LocalBatch(*(getattr(self, f"inflight_{name}") for name in INFLIGHT))

    @torch.no_grad()
    def dispatch(self, devices: np.ndarray) -> np.ndarray:
        """Send fresh work (generated samples) to ``devices``; those offline are skipped by the clock."""
        sent = self.clock.dispatch(devices)
        if not sent.any():
            return sent
        batch = self.draw_batch()      # drawn for every device: the random stream does not depend on who is sent
        mask = torch.from_numpy(sent).to(self.device)
        if sent.all():
            self.fill_generated(batch)
            for name in INFLIGHT:
                if getattr(batch, name) is not None:
                    getattr(self, f"inflight_{name}").copy_(getattr(batch, name))
        else:
            devices = torch.from_numpy(np.flatnonzero(sent)).to(self.device)
            self.fill_generated(batch, devices)
            for name in INFLIGHT:
                target, value = getattr(self, f"inflight_{name}"), getattr(batch, name)
                if value is not None:
                    target.index_copy_(0, devices, value if name.startswith("fake") else value[devices])
        self.dispatch_version.copy_(torch.where(mask, self.generator_version[self.generators.group],
                                                self.dispatch_version))
        self.bytes["edge_to_device"] += int(sent.sum()) * self.dispatch_bytes()
        return sent

    def dispatch_bytes(self) -> int:
        """Edge -> device per dispatch: two generated batches (float32) and their labels (int64)."""
        B, numel = self.cfg.data.batch_size, int(np.prod(self.spec.data_shape))
        return 2 * B * numel * 4 + 2 * B * 8

    def feedback_bytes(self) -> int:
        """Device -> edge per feedback: L_kj (float32) and the gradient w.r.t. the generated batch."""
        return 4 + self.cfg.data.batch_size * int(np.prod(self.spec.data_shape)) * 4

    # -- one clock event -------------------------------------------------------------------------
    def local_update(self, event, opt_g, opt_d) -> StepStats:
        """The devices whose feedback arrives train and feed back; their edges update (the clock loop is
        FederationModule.step_event)."""
        arrived = torch.from_numpy(event.arrived).to(self.device)
        updating = torch.from_numpy(event.updating).to(self.device)
        stats = self.process_feedback(arrived, updating, bool(event.arrived.all()), opt_g, opt_d,
                                      all_updating=bool(event.updating.all()))
        self.bytes["device_to_edge"] += int(event.arrived.sum()) * self.feedback_bytes()
        return stats

    def process_feedback(self, arrived: Tensor, updating: Tensor, everyone: bool, opt_g, opt_d,
                         all_updating: bool = False) -> StepStats:
        """Devices in ``arrived`` train on their in-flight work and feed back; their edges update
        (docs/method.md §2, §3-§5). Only the arrived devices are computed (``everyone``: all of them,
        through the grouped layout); the others' parameters and optimiser states stay untouched.

        Non-finite values (``trainer.nonfinite``): a device whose discriminator loss or gradients, L_kj
        or feedback are NaN/inf takes no step, gets no weight at its edge and sends nothing to G_k; an
        edge whose generator gradients are non-finite does not step. Each is counted (or stops the run)."""
        work = self.inflight()
        N = self.num_devices
        devices = None if everyone or not self.subset_compute else arrived.nonzero().flatten()
        pick = (lambda t: t) if devices is None else (lambda t: t[devices])

        def spread(values: Tensor) -> Tensor:    # [n] for the computed devices -> [N], 0 elsewhere
            return values if devices is None else values.new_zeros(N).index_copy(0, devices, values)

        staleness = (self.generator_version[self.generators.group] - self.dispatch_version).clamp(min=0)
        # The edge's G_k(z_g), with grad: in sync mode also the very samples the devices judge.
        regenerated = self.generate(pick(work.z_g), pick(work.y_g), devices)
        fake_g = (pick(work.fake_g) if self.stores_fake_g else regenerated).detach()

        # 1-3. The devices: D_kj steps, then L_kj and the feedback (here, or over the network).
        transport = self.device_transport
        reply = (self.device_feedback(work, fake_g, arrived, devices, opt_d) if transport is None
                 else transport.feedback(self, work, fake_g, arrived, devices))
        usable = reply.stepped & spread(finite_rows(reply.device_loss, reply.feedback).to(torch.float32)).bool()
        feedback = zero_rows(reply.feedback, pick(usable))             # M_k after the non-finite guard

        # 4. The edge weights the feedback and updates G_k through the regenerated samples.
        device_loss_all = torch.where(usable, spread(reply.device_loss.detach()), torch.zeros(N, device=self.device))
        weights = self.edge_update(regenerated, feedback, device_loss_all, usable, arrived, updating, staleness,
                                   devices, opt_g, all_updating)
        d_loss_all = torch.where(usable, spread(reply.d_loss.detach()), torch.zeros(N, device=self.device))
        return StepStats(usable, d_loss_all, device_loss_all, weights, staleness)

    def device_feedback(self, work: LocalBatch, fake_g: Tensor, arrived: Tensor, devices: Tensor | None,
                        opt_d) -> DeviceReply:
        """The devices' side of a local iteration, batched over the devices in ``devices`` (None: all):
        each updates D_kj on its real batch and G_k(z_d), then scores G_k(z_g) with the updated D_kj."""
        N, B = self.num_devices, work.real_x.shape[1]
        pick = (lambda t: t) if devices is None else (lambda t: t[devices])

        def spread(values: Tensor) -> Tensor:
            return values if devices is None else values.new_zeros(N).index_copy(0, devices, values)

        d_group, num_d = self.discriminators.group, self.discriminators.num_groups
        # 1-2. D_kj on the real data and G_k(z_d); one batched call over both.
        logits = self.discriminate(torch.cat([pick(work.real_x), pick(work.fake_d)], 1),
                                   torch.cat([pick(work.real_y), pick(work.y_d)], 1), devices=devices)
        d_loss = discriminator_loss(logits[:, :B], logits[:, B:], self.judged(pick(work.y_d), devices))
        opt_d.zero_grad(set_to_none=True)
        mask = arrived.to(work.real_x.dtype)
        d_weight = pick(self.discriminator_share) * (mask if devices is None else 1.0)
        self._backward((d_loss * d_weight).sum())
        lr_scale = None
        if self.asynchronous and self.cfg.clock.lr_scale and self.discriminator_groups == "device":
            # Journal rule: stragglers take larger steps, exp(staleness of their previous feedback), capped.
            lr_scale = self.previous_staleness.exp().clamp(max=self.cfg.clock.max_lr_scale)
        bad_loss = arrived & ~spread(torch.isfinite(d_loss.detach()).to(mask.dtype)).bool()
        d_step = ((segment_sum(mask, d_group, num_d) > 0) & self.device_discriminators.finite_grads()
                  & ~(segment_sum(bad_loss.to(mask.dtype), d_group, num_d) > 0))
        opt_d.step(active=None if bool(d_step.all()) else d_step, lr_scale=lr_scale)

        # 3. With the updated D_kj: L_kj and the gradient of the batch-mean objective w.r.t. G_k(z_g).
        fake_g = fake_g.requires_grad_(True)
        logits = self.discriminate(fake_g, pick(work.y_g), frozen=True, devices=devices)
        device_loss, objective = device_losses(logits, self.cfg.model.gan_loss, self.judged(pick(work.y_g), devices))
        feedback = sample_feedback(objective, fake_g)                  # per device: d l_kj / d G_k(z_g)
        return DeviceReply(d_loss, device_loss, feedback, arrived & d_step[d_group])

    def edge_update(self, regenerated: Tensor, feedback: Tensor, device_loss: Tensor, usable: Tensor,
                    arrived: Tensor, updating: Tensor, staleness: Tensor, devices: Tensor | None, opt_g,
                    all_updating: bool) -> Tensor:
        """The edges' side: weights w_kj over the usable feedback, the surrogate loss through the
        regenerated samples, one step of every updating G_k with a finite gradient; returns the weights."""
        K, edge = self.num_generators, self.generators.group
        pick = (lambda t: t) if devices is None else (lambda t: t[devices])
        weights = self.edge_weights(device_loss, staleness, usable)
        g_loss = edge_generator_loss(regenerated, pick(weights), feedback)
        extra = self.edge_regularizer(updating)
        if extra is not None:
            g_loss = g_loss + extra
        opt_g.zero_grad(set_to_none=True)
        self._backward(g_loss)
        g_step = (updating & (segment_sum(usable.to(torch.float32), edge, K) > 0)
                  & self.community_generators.finite_grads())
        clear = bool(((usable == arrived).all() & (g_step == updating).all()))    # the one host sync here
        if not clear:
            self.report_nonfinite(arrived & ~usable, updating & ~g_step)
        # ``all_updating`` comes from the clock (host): with nothing skipped, g_step == updating, no second sync
        opt_g.step(active=None if clear and all_updating else g_step)

        with torch.no_grad():
            self.generator_version += g_step.long()
            self.previous_staleness.copy_(torch.where(usable, staleness.float(), self.previous_staleness))
            # L*_k counts only the steps G_k took (a step skipped as non-finite adds nothing)
            self.round_loss_sum += torch.where(g_step, community_losses(weights, device_loss, edge, K), 0.0)
            self.round_updates += g_step.float()
        return weights

    def step_metrics(self, stats: StepStats) -> dict:
        count = stats.arrived.sum().clamp(min=1)
        return {
            "train/d_loss": stats.d_loss.sum() / count,
            "train/device_loss": stats.device_loss.sum() / count,
            "train/edge_weight_max": stats.edge_weights.max(),
            "train/staleness_mean": (stats.staleness * stats.arrived).sum() / count,
        }

    # -- rounds ------------------------------------------------------------------------------------
    def global_state(self) -> dict[str, Tensor]:
        return dict(self.global_generator.state_dict())

    def community_state(self) -> dict[str, Tensor]:
        return self.community_generators.stacked_state()

    def apply_global(self, new_global_state: dict[str, Tensor]) -> None:
        self.global_generator.load_state_dict(new_global_state)
        self.community_generators.broadcast(self.global_state())

    # -- sampling for evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator, domains: Tensor | None = None) -> Tensor:
        """Samples of the global generator G for the given class labels (ignored when unconditional);
        ``domains`` (community indices) matter only to domain-conditional variants."""
        z = torch.randn(len(labels), self.cfg.model.latent_dim, generator=generator, device=labels.device)
        return self.global_generator(z, labels)

