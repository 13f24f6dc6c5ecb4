"""What both model families share: the plain ``Federation`` (the clock loop, rounds, the seeded random
stream, bytes, fault counters and their checkpoint state) and ``FederationModule``, the Lightning glue
around it (the training step, logging, the EMA of the global model, checkpoints).

A family (``FederatedGAN`` in gan.py, ``FedVAE`` in vae.py) builds its networks from its recipe row
(recipes.py) and fills in five methods: ``local_update`` (the devices that report, and their edges),
``step_metrics``, ``dispatch`` (fresh work to idle devices), ``end_round`` (the cloud's round) and
``global_model`` (what the cloud's aggregate lands in).
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fedgen_pl.aggregation import RoundStats, aggregate, edge_averages
from fedgen_pl.clock import VirtualClock
from fedgen_pl.config import with_defaults
from fedgen_pl.errors import NonFiniteError
from fedgen_pl.privacy import privacy_of, sanitize_updates
from fedgen_pl.recipes import recipe_of
from fedgen_pl.spec import FederationSpec

log = logging.getLogger("fedgen")


def ema_average(decay: float):
    """AveragedModel's update for an EMA with warm-up: after round r (r >= 2; ``ema_1 = G_1``)

        ema_r = d_r ema_{r-1} + (1 - d_r) G_r,    d_r = min(decay, r / (r + 9)),

    so that a short run's average is not dominated by its first, poor rounds (the warm-up of
    TensorFlow's ExponentialMovingAverage with num_updates; d_r reaches 0.9 at r = 81, 0.99 at r = 891)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        r = int(num_averaged) + 1                      # the round being taken in
        d = min(decay, r / (r + 9))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - d)
            else:                                      # integer buffers (counters): the latest value
                a.copy_(c)

    return update


class Grouping(torch.nn.Module):
    """Which member of a ``StackedModule`` serves each device: ``group_of_device[n]`` (groups contiguous,
    in device order). Moves per-device batches ``[N, B, ...]`` to per-member batches ``[G, M*B, ...]``
    and back; ragged groups are padded to the largest (M) and the padding dropped again."""

    def __init__(self, group_of_device: list[int]):
        super().__init__()
        sizes = np.bincount(group_of_device).tolist()
        self.num_groups, self.max_size = len(sizes), max(sizes)
        self.uniform = len(set(sizes)) == 1
        start = np.cumsum([0] + sizes)[:-1]
        slots = [g * self.max_size + n - start[g] for n, g in enumerate(group_of_device)]
        self.register_buffer("slots", torch.tensor(slots), persistent=False)
        self.register_buffer("group", torch.tensor(group_of_device), persistent=False)
        self.sizes = sizes

    def to_members(self, x: Tensor) -> Tensor:
        G, M = self.num_groups, self.max_size
        if not self.uniform:
            x = x.new_zeros(G * M, *x.shape[1:]).index_copy(0, self.slots, x)
        return x.reshape(G, M * x.shape[1], *x.shape[2:])

    def from_members(self, y: Tensor, batch: int) -> Tensor:
        y = y.reshape(self.num_groups * self.max_size, batch, *y.shape[2:])
        return y if self.uniform else y[self.slots]


class Federation(nn.Module):
    """The federation's bookkeeping, one plain object per run: which generator serves each device, the
    virtual clock, completed rounds and training steps, the seeded random stream of training, the bytes
    sent per link, the fault counters, and per generator the round's loss sum and update count (L*_k).
    Tensors are buffers (they follow the module's device); the rest is ``host_state``."""

    def __init__(self, cfg: DictConfig, spec: FederationSpec, generator_groups: str):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        N = spec.num_devices
        community = spec.community_of_device
        self.register_buffer("community_of_device", torch.tensor(community), persistent=False)
        self.device_groups = {"community": community, "single": [0] * N, "device": list(range(N))}
        self.generators = Grouping(self.device_groups[generator_groups])
        K = self.num_generators = self.generators.num_groups
        counts = torch.tensor(spec.device_sample_counts, dtype=torch.float32)
        self.register_buffer("generator_sample_counts", torch.zeros(K).index_add_(0, self.generators.group, counts),
                             persistent=False)
        self.register_buffer("generator_version", torch.zeros(K, dtype=torch.long))  # member updates so far
        self.register_buffer("round_loss_sum", torch.zeros(K))      # per member (edge)
        self.register_buffer("round_updates", torch.zeros(K))
        self.register_buffer("nonfinite_per_device", torch.zeros(N, dtype=torch.long))   # updates skipped
        self.round = 0          # completed global rounds
        self.iteration = 0      # clock events processed (training steps)
        self.clock = VirtualClock(self.generators.sizes, cfg.federation["update"], cfg.federation.local_iters,
                                  cfg.clock, int(cfg.seed))
        self.bytes = {"device_to_edge": 0, "edge_to_device": 0, "edge_to_cloud": 0, "cloud_to_edge": 0}
        self.counters = {"timeouts": 0, "dropouts": 0, "nonfinite_skipped": 0,
                         "nonfinite_generator_skipped": 0, "cloud_left_out": 0}
        self._rng: torch.Generator | None = None
        self._pending_rng_state: tuple[str, Tensor] | None = None

    # -- the clock loop: one event per training step --------------------------------------------------
    def step(self, local_update, dispatch):
        """Advance the clock to its next event, let the devices that report update (``local_update(event)``),
        count faults, and send fresh work to idle devices (``dispatch(devices)``). Returns the update's
        statistics (None when no feedback arrived)."""
        # Idle devices get work: at the start, and after a finished run is resumed with more rounds
        # (in between, every step ends by dispatching, so this sends nothing).
        dispatch(self.clock.idle_devices())
        event = self.clock.next_event()
        stats = local_update(event) if event.arrived.any() else None
        self.counters["timeouts"] += int(event.timed_out.sum())
        self.counters["dropouts"] = self.clock.dropouts
        dispatch(self.clock.idle_devices())
        self.iteration += 1
        return stats

    def rng(self, device: torch.device) -> torch.Generator:
        """The seeded generator behind every random draw of training, on ``device``."""
        if self._rng is None or self._rng.device != device:
            self._rng = torch.Generator(device=device)
            self._rng.manual_seed(int(self.cfg.seed) + 17)
            if self._pending_rng_state is not None:
                device_type, state = self._pending_rng_state
                if device_type != device.type:
                    raise RuntimeError(f"this checkpoint's random state was saved on {device_type}; resume it "
                                       f"with trainer.accelerator={'gpu' if device_type == 'cuda' else 'cpu'} "
                                       f"to continue the exact random sequence")
                self._rng.set_state(state)
                self._pending_rng_state = None
        return self._rng

    # -- rounds ------------------------------------------------------------------------------------
    @property
    def asynchronous(self) -> bool:
        return self.cfg.federation["update"] == "async"

    @property
    def training_finished(self) -> bool:
        return self.round >= self.cfg.federation.global_rounds

    def round_stats(self, tau_cloud: float, cloud_lr: float) -> RoundStats:
        """L*_k = mean over the round's updates of G_k of sum_j w_kj L_kj (method §4); a member that made no
        update this round (every step skipped as non-finite) does not take part."""
        return RoundStats(community_loss=self.round_loss_sum / self.round_updates.clamp(min=1),
                          sample_counts=self.generator_sample_counts, tau_cloud=tau_cloud, cloud_lr=cloud_lr,
                          participating=self.round_updates > 0)

    def record_updates(self, stepped: Tensor, losses: Tensor) -> None:
        """Members that took a step (bool ``[K]``) and their losses: the round's L*_k sums and versions."""
        self.generator_version += stepped.long()
        self.round_loss_sum += torch.where(stepped, losses, 0.0)
        self.round_updates += stepped.float()

    def finish_round(self, bytes_sent: dict[str, int]) -> None:
        """Every member now holds the new global model: the next round starts (at the tick the last
        member finished), with the round's traffic counted."""
        self.generator_version += 1
        self.round_loss_sum.zero_()
        self.round_updates.zero_()
        self.round += 1
        for link, count in bytes_sent.items():
            self.bytes[link] += count
        self.clock.start_round()

    def report_nonfinite(self, devices: Tensor, generators: Tensor | None = None) -> None:
        """Count the devices and generators skipped for non-finite values, or stop (trainer.nonfinite)."""
        self.nonfinite_per_device += devices.long()
        self.counters["nonfinite_skipped"] = int(self.nonfinite_per_device.sum())
        generators = torch.zeros(0, dtype=torch.bool) if generators is None else generators
        self.counters["nonfinite_generator_skipped"] += int(generators.sum())
        if self.cfg.trainer.nonfinite == "stop":
            where = []
            for n in devices.nonzero().flatten().tolist():
                k = self.spec.community_of_device[n]
                j = n - sum(self.spec.devices_per_community[:k])
                where.append(f"community {k} ({self.spec.community_names[k]}), device {j}")
            for g in generators.nonzero().flatten().tolist():
                where.append(f"generator {g}'s gradients")
            raise NonFiniteError(f"non-finite loss or gradient at iteration {self.iteration} (round {self.round}): "
                                 f"{'; '.join(where)}. Stopped (trainer.nonfinite=stop); lower the learning rates, "
                                 f"or set trainer.nonfinite=skip to skip such updates and count them")

    # -- checkpoints: the part of the state that is not a tensor ----------------------------------------
    def host_state(self, device: torch.device) -> dict:
        return {"round": self.round, "iteration": self.iteration, "rng": (device.type, self.rng(device).get_state()),
                "clock": self.clock.state_dict(), "bytes": dict(self.bytes), "counters": dict(self.counters)}

    def load_host_state(self, state: dict) -> None:
        self.round, self.iteration = state["round"], state["iteration"]
        self._rng, self._pending_rng_state = None, state["rng"]
        self.clock.load_state_dict(state["clock"])
        self.bytes, self.counters = dict(state["bytes"]), dict(state["counters"])


# Buffers that moved from the model into its Federation: a checkpoint written before keeps them at the top.
MOVED_BUFFERS = ("generator_version", "round_loss_sum", "round_updates", "nonfinite_per_device")


class FederationModule(pl.LightningModule):
    """The Lightning glue of a model family around its ``Federation`` (manual optimisation)."""

    def __init__(self, config: dict, spec: dict):
        super().__init__()
        self.save_hyperparameters()
        self.recipe = recipe_of(config["model"]["name"])      # the model's parts (recipes.py)
        self.automatic_optimization = False
        self.cfg: DictConfig = with_defaults(config)        # a checkpoint from an older version lacks newer keys
        self.spec = FederationSpec.from_dict(spec)
        self.federation = Federation(self.cfg, self.spec, self.recipe.generators)
        self.num_communities, self.num_devices = self.spec.num_communities, self.spec.num_devices
        self.num_generators = self.federation.num_generators
        self.data = None        # the DataModule (set in on_fit_start, or by attach_data)
        self.ema: AveragedModel | None = None   # built by configure_model once the family's networks exist
        self.finished_round: dict | None = None  # the record of the round the last step completed
        self.privacy = privacy_of(self.cfg, self.recipe)     # None: nothing is sanitised (privacy.noise_multiplier=0)

    # -- what a family fills in ---------------------------------------------------------------------
    def local_update(self, event, optimizers: list):
        """The family's update of the devices (and edges) in ``event.arrived`` / ``event.updating``."""
        raise NotImplementedError

    def step_metrics(self, stats) -> dict:
        raise NotImplementedError

    def dispatch(self, devices: np.ndarray) -> np.ndarray:
        """Send fresh work to ``devices`` (bool [N]; those offline are skipped by the clock)."""
        return self.federation.clock.dispatch(devices)

    def end_round(self) -> dict:
        """The cloud's round (called by ``training_step`` once the clock completes a round); returns its record."""
        raise NotImplementedError

    def global_model(self) -> nn.Module:
        """The network the cloud's aggregate lands in and ``sample_global`` draws from."""
        raise NotImplementedError

    # -- the federation's state, read by callbacks, the summary and tests -------------------------------
    @property
    def round(self) -> int:
        return self.federation.round

    @property
    def iteration(self) -> int:
        return self.federation.iteration

    @property
    def clock(self) -> VirtualClock:
        return self.federation.clock

    @property
    def bytes(self) -> dict[str, int]:
        return self.federation.bytes

    @property
    def counters(self) -> dict[str, int]:
        return self.federation.counters

    @property
    def round_complete(self) -> bool:
        return self.federation.clock.round_finished()

    @property
    def local_iter(self) -> int:
        """Edge updates of the slowest community in the current round."""
        return int(self.federation.clock.updates.min())

    @property
    def training_finished(self) -> bool:
        return self.federation.training_finished

    def generator_rng(self) -> torch.Generator:
        return self.federation.rng(self.device)

    def attach_data(self, datamodule) -> None:
        """The DataModule the dispatches draw from (done by ``on_fit_start`` under a Trainer)."""
        self.data = datamodule.to(self.device)

    def backprop(self, loss: Tensor) -> None:
        if self._trainer is None:  # used outside a Trainer (tests, benchmarks)
            loss.backward()
        else:
            self.manual_backward(loss)

    def step_event(self, *optimizers):
        """One training step: the clock's next event (``Federation.step``)."""
        return self.federation.step(lambda event: self.local_update(event, list(optimizers)), self.dispatch)

    def aggregate_round(self, rule, tau_cloud: float, cloud_lr: float, global_state: dict,
                        community_state: dict) -> tuple[dict, dict]:
        """The cloud's aggregation (``rule``) over the members that took part: the new global state and the
        round's record."""
        stats = self.federation.round_stats(tau_cloud, cloud_lr)
        self.counters["cloud_left_out"] = self.counters.get("cloud_left_out", 0) + int((~stats.participating).sum())
        if self.recipe.generators == "device" and self.cfg.federation.fedavg_via_edges:
            # one model per device: the edges average theirs first, and the cloud sees only the K edge averages
            community_state, stats = edge_averages(community_state, stats, self.federation.community_of_device,
                                                   self.num_communities)
        new_state, weights = aggregate(rule, global_state, community_state, stats)
        return new_state, {"community_loss": stats.community_loss.tolist(), "cloud_weights": weights.tolist()}

    def sanitized_updates(self, stacked: dict[str, Tensor], start: dict[str, Tensor]) -> dict[str, Tensor]:
        """DP-FedAvg on the device side (privacy.py): what each member sends of ``stacked`` (``[n, ...]``) when
        it started the round from ``start``; ``stacked`` itself unless the run's privacy sanitises updates."""
        if self.privacy is None or self.privacy.mechanism != "updates":
            return stacked
        p = self.privacy
        return sanitize_updates(stacked, start, p.clip, p.noise_multiplier, self.federation.rng(self.device))

    def privacy_metrics(self) -> dict[str, float]:
        """``privacy/epsilon``: the eps spent so far at ``privacy.delta`` (none without privacy)."""
        if self.privacy is None:
            return {}
        steps = self.iteration if self.privacy.mechanism == "feedback" else self.round
        return {"privacy/epsilon": self.privacy.epsilon(steps)}

    def close_round(self, bytes_sent: dict[str, int]) -> None:
        """After the new global model is in every member: the EMA takes it in, the next round starts and
        parked devices get fresh work."""
        if self.ema is not None:
            self.ema.update_parameters(self.global_model())
        self.federation.finish_round(bytes_sent)
        if not self.training_finished and self.data is not None:
            self.dispatch(self.federation.clock.idle_devices())

    # -- Lightning glue ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.attach_data(self.trainer.datamodule)
        if self.recipe.cloud == "fedavg":     # the baselines and the VAEs: say which keys do not apply
            log.info("%s: this model's own rules replace %s", self.cfg.model.name, self.recipe.replaced_keys())

    def training_step(self, batch, batch_idx):
        """One clock event and, when it completes the round, the cloud's round (``callbacks.GlobalAggregation``
        then logs it and signals the round's end to the other callbacks)."""
        optimizers = self.optimizers()
        stats = self.step_event(*(optimizers if isinstance(optimizers, list) else [optimizers]))
        if stats is not None and self.iteration % self.cfg.trainer.log_every_n_iters == 0:
            self.log_metrics(self.step_metrics(stats))
        if self.round_complete:
            self.finished_round = self.end_round()

    def log_metrics(self, metrics: dict) -> None:
        """Send metrics to every logger against the step count, with round and virtual time alongside."""
        values = {k: float(v) for k, v in metrics.items()}
        values["round"] = self.round
        values["virtual_time"] = self.clock.tick
        for logger in self.loggers:
            logger.log_metrics(values, step=self.iteration)

    # -- the EMA of the global model (model.ema_decay; docs/method.md §10) --------------------------------
    def configure_model(self) -> None:
        """Lightning calls this before a checkpoint is restored (``fit``, ``load_from_checkpoint``): the
        exponential moving average of the global model over rounds, when ``model.ema_decay`` > 0
        (torch's AveragedModel with ``ema_average``)."""
        decay = float(self.cfg.model.ema_decay)
        if decay > 0 and self.ema is None:
            self.ema = AveragedModel(self.global_model(), multi_avg_fn=ema_average(decay),
                                     use_buffers=True).requires_grad_(False)

    @property
    def has_ema(self) -> bool:
        """An EMA that has taken in at least one round (one restored from a checkpoint written before the
        EMA existed has not: it starts at the next round, and is not evaluated until then)."""
        return self.ema is not None and bool(self.ema.n_averaged > 0)

    @contextmanager
    def ema_weights(self):
        """Within the block the global model holds the EMA's weights (sampling, evaluation), then its own."""
        model = self.global_model()
        own = {name: value.clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(own)

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        partition = getattr(self.data, "partition", None)
        checkpoint["federation_state"] = {
            "partition": None if partition is None else [[torch.tensor(d, dtype=torch.long) for d in community]
                                                         for community in partition],
            "global_rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state_to_plain(np.random.get_state()),
                           "python": _to_lists(random.getstate())},
            **self.federation.host_state(self.device),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        weights = checkpoint["state_dict"]
        for name in MOVED_BUFFERS:
            if name in weights:
                weights[f"federation.{name}"] = weights.pop(name)
        if not hasattr(self, "domain_classifier"):
            # reg_cgan and fed_cgan built an (unused) domain classifier before the recipes: not part of them now
            for name in [n for n in weights if n.startswith("domain_classifier.")]:
                del weights[name]
        if self.ema is not None and "ema.n_averaged" not in weights:
            # a checkpoint from before the EMA: the average starts at the next round (has_ema is False until then)
            weights.update({f"ema.{name}": value.clone() for name, value in self.ema.state_dict().items()})
            weights["ema.n_averaged"] = torch.zeros_like(weights["ema.n_averaged"])
        state = checkpoint["federation_state"]
        self.federation.load_host_state(state)
        if "global_rng" in state:     # only user code draws from these; restored for completeness
            torch.set_rng_state(state["global_rng"]["torch"])
            np.random.set_state(_numpy_state_from_plain(state["global_rng"]["numpy"]))
            random.setstate(_to_tuples(state["global_rng"]["python"]))


def _numpy_state_to_plain(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
