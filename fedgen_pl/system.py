"""The three-tier federated GAN as one LightningModule (METHOD.md §1, §2, §5).

Tiers and where they live:
- device discriminators D_kj: ``device_discriminators``, one ``StackedModule`` over all N devices;
- edge community generators G_k: ``community_generators``, one ``StackedModule`` over K communities;
- cloud global generator G: ``global_generator``, a plain module updated only by aggregation.

A training step is one local iteration of every community, vectorised over devices and communities.
The global aggregation at the end of a round is done by ``callbacks.GlobalAggregation``; this module
only exposes the round's statistics and applies the new global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from fedgen_pl.aggregation import RoundStats, community_losses, sync_edge_weights
from fedgen_pl.config import cloud_lr
from fedgen_pl.networks import build_discriminator, build_generator
from fedgen_pl.optim import StackedAdam
from fedgen_pl.spec import FederationSpec
from fedgen_pl.stacked import StackedModule


@dataclass
class LocalBatch:
    """Everything random in one local iteration, per device (leading dim N, then batch B)."""

    real_x: Tensor
    real_y: Tensor
    z_d: Tensor          # latents for the discriminator update
    y_d: Tensor          # their labels, from each device's label histogram
    z_g: Tensor          # latents for the generator update
    y_g: Tensor


@dataclass
class StepStats:
    d_loss: Tensor       # [N] discriminator loss before its step
    device_loss: Tensor  # [N] L_kj = E[log(1 - D_kj(G_k(z_g)))] with the updated D_kj
    edge_weights: Tensor  # [N] w_kj


class FederatedGAN(pl.LightningModule):
    def __init__(self, config: dict, spec: dict):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.cfg: DictConfig = OmegaConf.create(config)
        self.spec = FederationSpec.from_dict(spec)
        K, N = self.spec.num_communities, self.spec.num_devices
        self.num_communities, self.num_devices = K, N
        model_cfg = self.cfg.model

        self.global_generator = build_generator(model_cfg, self.spec)
        self.community_generators = StackedModule(self.global_generator, K)   # G_k <- G at the start
        self.device_discriminators = StackedModule([build_discriminator(model_cfg, self.spec) for _ in range(N)])

        community = torch.tensor(self.spec.community_of_device)
        self.register_buffer("community_of_device", community, persistent=False)
        counts = self.spec.devices_per_community
        self.uniform_devices = len(set(counts)) == 1
        self.max_devices = max(counts)
        # Slot of each device in a [K, J_max] grid, to run ragged communities through G padded.
        slots = [k * self.max_devices + j for k, c in enumerate(counts) for j in range(c)]
        self.register_buffer("device_slot", torch.tensor(slots), persistent=False)
        self.register_buffer("community_sample_counts", torch.zeros(K), persistent=False)
        self.community_sample_counts.index_add_(0, community, torch.tensor(self.spec.device_sample_counts,
                                                                             dtype=torch.float32))

        # Round state (saved in checkpoints through on_save_checkpoint).
        self.round = 0          # completed global rounds
        self.local_iter = 0     # local iterations done in the current round
        self.iteration = 0      # local iterations done in total
        self.register_buffer("round_loss_sum", torch.zeros(K))
        self.register_buffer("round_updates", torch.zeros(K))
        self.rng: torch.Generator | None = None
        self._pending_rng_state: tuple[str, Tensor] | None = None

    # -- configuration ---------------------------------------------------------------------------
    def configure_optimizers(self):
        m = self.cfg.model
        betas = (m.beta1, m.beta2)
        opt_g = StackedAdam(self.community_generators.parameters(), self.num_communities, lr=m.g_lr, betas=betas)
        opt_d = StackedAdam(self.device_discriminators.parameters(), self.num_devices, lr=m.d_lr, betas=betas)
        return [opt_g, opt_d]

    @property
    def cloud_lr(self) -> float:
        return cloud_lr(self.cfg)

    def generator_rng(self) -> torch.Generator:
        """The seeded generator behind every random draw of training, on the module's device."""
        if self.rng is None or self.rng.device != self.device:
            self.rng = torch.Generator(device=self.device)
            self.rng.manual_seed(int(self.cfg.seed) + 17)
            if self._pending_rng_state is not None:
                device_type, state = self._pending_rng_state
                if device_type != self.device.type:
                    raise RuntimeError(f"this checkpoint's random state was saved on {device_type}; resume it "
                                       f"with trainer.accelerator={'gpu' if device_type == 'cuda' else 'cpu'} "
                                       f"to continue the exact random sequence")
                self.rng.set_state(state)
                self._pending_rng_state = None
        return self.rng

    # -- the tiers ---------------------------------------------------------------------------------
    def generate(self, z: Tensor, labels: Tensor) -> Tensor:
        """Each device's samples from its community's generator: z ``[N, B, d]`` -> ``[N, B, *shape]``."""
        K, N, B = self.num_communities, self.num_devices, z.shape[1]
        if self.uniform_devices:
            J = N // K
            out = self.community_generators(z.reshape(K, J * B, -1), labels.reshape(K, J * B))
            return out.reshape(N, B, *out.shape[2:])
        slots, J = self.device_slot, self.max_devices
        z_grid = z.new_zeros(K * J, *z.shape[1:]).index_copy(0, slots, z)
        y_grid = labels.new_zeros(K * J, B).index_copy(0, slots, labels)
        out = self.community_generators(z_grid.reshape(K, J * B, -1), y_grid.reshape(K, J * B))
        return out.reshape(K * J, B, *out.shape[2:])[slots]

    def draw_batch(self, datamodule) -> LocalBatch:
        rng, B = self.generator_rng(), self.cfg.data.batch_size
        real_x, real_y = datamodule.sample_real(B, rng)
        z_shape = (self.num_devices, B, self.cfg.model.latent_dim)
        return LocalBatch(
            real_x=real_x,
            real_y=real_y,
            z_d=torch.randn(z_shape, generator=rng, device=self.device),
            y_d=datamodule.sample_fake_labels(B, rng),
            z_g=torch.randn(z_shape, generator=rng, device=self.device),
            y_g=datamodule.sample_fake_labels(B, rng),
        )

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is None:  # used outside a Trainer (tests, benchmarks)
            loss.backward()
        else:
            self.manual_backward(loss)

    def local_iteration(self, batch: LocalBatch, opt_g, opt_d) -> StepStats:
        """One synchronous local iteration of every community (METHOD.md §2, §5.1)."""
        # 1-2. Devices update D_kj on their real data and on G_k(z_d).
        with torch.no_grad():
            fake_d = self.generate(batch.z_d, batch.y_d)
        # One batched call over real and generated samples (D scores every sample independently).
        B = batch.real_x.shape[1]
        logits = self.device_discriminators(torch.cat([batch.real_x, fake_d], 1), torch.cat([batch.real_y, batch.y_d], 1))
        real_logits, fake_logits = logits[:, :B], logits[:, B:]
        # -[log D(x) + log(1 - D(G(z_d)))], batch means, one value per device
        d_loss = F.softplus(-real_logits).mean(1) + F.softplus(fake_logits).mean(1)
        opt_d.zero_grad(set_to_none=True)
        self._backward(d_loss.sum())
        opt_d.step()

        # 3. The updated D_kj score G_k(z_g): L_kj = E[log(1 - D_kj(G_k(z_g)))] goes back to the edge.
        fake_g = self.generate(batch.z_g, batch.y_g)
        logits = self.device_discriminators(fake_g, batch.y_g, frozen=True)
        device_loss = -F.softplus(logits).mean(1)
        if self.cfg.model.gan_loss == "non_saturating":
            objective = F.softplus(-logits).mean(1)           # -E[log D(G(z_g))]
        else:
            objective = device_loss

        # 4. The edge weights its devices and updates G_k.
        weights = sync_edge_weights(device_loss, self.community_of_device, self.num_communities,
                                    self.cfg.federation.tau_edge)
        g_loss = (weights * objective).sum()
        opt_g.zero_grad(set_to_none=True)
        self._backward(g_loss)
        opt_g.step()

        self.round_loss_sum += community_losses(weights, device_loss, self.community_of_device,
                                                self.num_communities)
        self.round_updates += 1
        return StepStats(d_loss.detach(), device_loss.detach(), weights)

    # -- Lightning glue ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.trainer.datamodule.to(self.device)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        stats = self.local_iteration(self.draw_batch(self.trainer.datamodule), opt_g, opt_d)
        self.local_iter += 1
        self.iteration += 1
        every = self.cfg.trainer.log_every_n_iters
        if self.iteration % every == 0:
            self.log_metrics({
                "train/d_loss": stats.d_loss.mean(),
                "train/device_loss": stats.device_loss.mean(),
                "train/edge_weight_max": stats.edge_weights.max(),
            })

    def log_metrics(self, metrics: dict) -> None:
        """Send metrics to every logger against the iteration count, with the round alongside."""
        values = {k: float(v) for k, v in metrics.items()}
        values["round"] = self.round
        for logger in self.loggers:
            logger.log_metrics(values, step=self.iteration)

    # -- rounds ------------------------------------------------------------------------------------
    @property
    def round_complete(self) -> bool:
        return self.local_iter >= self.cfg.federation.local_iters

    @property
    def training_finished(self) -> bool:
        return self.round >= self.cfg.federation.global_rounds

    def round_stats(self) -> RoundStats:
        """L*_k = mean over the round's updates of G_k of sum_j w_kj L_kj (METHOD.md §5.2)."""
        return RoundStats(
            community_loss=self.round_loss_sum / self.round_updates.clamp(min=1),
            sample_counts=self.community_sample_counts,
            tau_cloud=self.cfg.federation.tau_cloud,
            cloud_lr=self.cloud_lr,
        )

    def global_state(self) -> dict[str, Tensor]:
        return dict(self.global_generator.state_dict())

    def community_state(self) -> dict[str, Tensor]:
        return self.community_generators.stacked_state()

    @torch.no_grad()
    def finish_round(self, new_global_state: dict[str, Tensor]) -> None:
        """G <- the aggregate, G_k <- G for every k, and start the next round."""
        self.global_generator.load_state_dict(new_global_state)
        self.community_generators.broadcast(self.global_state())
        self.round_loss_sum.zero_()
        self.round_updates.zero_()
        self.local_iter = 0
        self.round += 1

    # -- sampling for evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def sample_global(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Samples of the global generator G for the given labels (ignored when unconditional)."""
        z = torch.randn(len(labels), self.cfg.model.latent_dim, generator=generator, device=labels.device)
        return self.global_generator(z, labels)

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["federation_state"] = {
            "round": self.round,
            "local_iter": self.local_iter,
            "iteration": self.iteration,
            "rng": (self.device.type, self.generator_rng().get_state()),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["federation_state"]
        self.round, self.local_iter, self.iteration = state["round"], state["local_iter"], state["iteration"]
        self.rng, self._pending_rng_state = None, state["rng"]
