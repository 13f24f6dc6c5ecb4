"""One deployed device: its data (its share of the partition that the experiment and seed define, built
on the node from the datasets under its ``data-root`` node config, else ``data.root``, or its own
``data-dir``, never sent), its discriminator and Adam state, and its step, the engine's own
``tiers.device_iteration``; with privacy on, what it sends goes through the engine's own
``privacy.sanitize_feedback``. The Flower ClientApp that serves it is ``client.py``."""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from fedgen_pl.flower.wire import global_device_index
from fedgen_pl.privacy import privacy_of, sanitize_feedback
from fedgen_pl.tiers import device_iteration

NODE_DATA: dict[str, object] = {}    # the ClientApp's data for the run it serves (one entry)


def read_node_data(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's own data: ``<data-dir>/train.npz`` with ``x`` (uint8 images ``[n, H, W]``, ``[n, H, W, C]``,
    ``[n, C, H, W]``, or float vectors ``[n, d]``) and ``y`` (labels in the federation's label space)."""
    path = directory / "train.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this node's data-dir needs train.npz with arrays x and y")
    with np.load(path, allow_pickle=False) as archive:
        x, y = torch.from_numpy(archive["x"].copy()), torch.from_numpy(archive["y"].astype(np.int64))
    if len(x) != len(y) or len(x) == 0 or int(y.min()) < 0:
        raise ValueError(f"{path}: x and y must have the same non-zero length and labels >= 0")
    return x, y


def node_batch_source(directory: Path, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """The node's data as the devices' batches are drawn: images converted to the federation's shape and
    scaled to [-1, 1]; vectors as float32."""
    from datamodules.sources import _convert
    from fedgen_pl.images import normalise_images

    x, y = read_node_data(directory)
    if int(y.max()) >= spec.num_labels:
        raise ValueError(f"{directory / 'train.npz'}: label {int(y.max())} is outside the federation's "
                         f"{spec.num_labels} labels")
    if x.dtype == torch.uint8 and len(spec.data_shape) == 3:
        x = _convert(x, spec.data_shape[0], spec.data_shape[1])
    x = normalise_images(x)
    if tuple(x.shape[1:]) != tuple(spec.data_shape):
        raise ValueError(f"{directory / 'train.npz'}: samples of shape {tuple(x.shape[1:])}, the federation's "
                         f"are {tuple(spec.data_shape)}")
    return x, y


class DeviceWorker:
    """One deployed device: its data (built once), its discriminator and Adam state, and ``step``, one local
    iteration through the engine's own ``tiers.device_iteration``. The message path builds it per message
    and keeps D and Adam in ``context.state``; the stream path builds it once per run."""

    def __init__(self, cfg, spec, node_config, d_init: dict | None = None):
        from fedgen_pl.networks import build_discriminator, real_labels
        from fedgen_pl.recipes import recipe_of

        self.cfg, self.spec = cfg, spec
        self.community, device = int(node_config["community"]), int(node_config["device"])
        if "data-root" in node_config:            # where this node keeps the datasets (else the run's data.root)
            cfg.data.root = str(node_config["data-root"])
        self.g = global_device_index(cfg, self.community, device)
        self.own, self.datamodule = node_data(cfg, spec, node_config)
        m = cfg.model
        self.conditioning = recipe_of(m.name).conditioning  # the recipe's discriminator and real-batch labels
        self.real_labels = real_labels
        torch.manual_seed(int(cfg.seed) * 100003 + self.g)
        self.discriminator = build_discriminator(m, spec, self.conditioning)
        if d_init is not None:                     # test mode: the in-process run's first weights
            self.discriminator.load_state_dict(d_init)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=m.d_lr, betas=(m.beta1, m.beta2))
        # Privacy: the noise must be secret from the edge, which knows the run's seed: the OS's randomness.
        self.privacy = privacy_of(cfg, recipe_of(m.name))
        self.noise = torch.Generator().manual_seed(secrets.randbits(63)) if self.privacy is not None else None

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"d.{k}": v for k, v in self.discriminator.state_dict().items()}
        for i, s in self.optimizer.state_dict()["state"].items():
            state.update({f"t.{i}": torch.as_tensor(s["step"]), f"m.{i}": s["exp_avg"], f"v.{i}": s["exp_avg_sq"]})
        return state

    def load_state(self, saved: dict[str, torch.Tensor]) -> None:
        self.discriminator.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("d.")})
        moments = {int(k.split(".")[1]) for k in saved if k.startswith("m.")}
        if moments:
            self.optimizer.load_state_dict({
                "state": {i: {"step": saved[f"t.{i}"], "exp_avg": saved[f"m.{i}"], "exp_avg_sq": saved[f"v.{i}"]}
                          for i in moments},
                "param_groups": self.optimizer.state_dict()["param_groups"]})

    def step(self, work: dict[str, torch.Tensor], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """One local iteration (method §2, steps 1-3): D_kj steps on its real batch and G_k(z_d), then scores
        G_k(z_g) with the updated D_kj. Returns d l_kj / d G_k(z_g) and (d_loss, L_kj, stepped, r1_penalty)."""
        # The real batch: the indices the server drew (test mode), else drawn here from this device's share.
        B = work["fake_d"].shape[0]
        seed = int(self.cfg.seed) * 1_000_003 + self.g * 7919 + int(iteration)
        rng = torch.Generator().manual_seed(seed)      # the real batch, then any instance noise
        u = torch.rand(B, generator=rng)
        if self.own is not None:
            index = (u * len(self.own[1])).long()
            real_x, labels = self.own[0][index], self.own[1][index]
        else:
            data = self.datamodule
            index = (work["real_index"].long() if "real_index" in work
                     else data.device_offsets[self.g] + (u * data.device_sizes[self.g]).long())
            real_x, labels = data.normalise(data.train_x[index]), data.train_y[index]
        real_y = self.real_labels(self.conditioning, labels, self.community)
        discriminator, optimizer = self.discriminator, self.optimizer

        def discriminate(x: torch.Tensor, labels: torch.Tensor, frozen: bool) -> torch.Tensor:
            params = {name: p.detach() if frozen else p for name, p in discriminator.named_parameters()}
            return functional_call(discriminator, params, (x[0], labels[0]))[None]

        def update(d_loss: torch.Tensor) -> bool:
            optimizer.zero_grad(set_to_none=True)
            d_loss.sum().backward()
            finite = bool(torch.isfinite(d_loss).all()) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in discriminator.parameters())
            if finite:
                optimizer.step()
            return finite

        d_loss, device_loss, feedback, finite, penalty = device_iteration(
            discriminate, update, real_x[None], real_y[None], work["fake_d"][None], work["y_d"][None],
            work["fake_g"][None], work["y_g"][None], self.cfg.model.gan_loss,
            instance_noise=self.cfg.model.instance_noise, generator=rng, r1_gamma=self.cfg.model.r1_gamma)
        d_loss, penalty = float(d_loss.detach()[0]), float(penalty.detach()[0])
        if self.privacy is not None:     # sanitised before the transport; D's own losses are not sent (nan)
            p = self.privacy
            device_loss, feedback = sanitize_feedback(device_loss.detach(), feedback, p.clip, p.loss_bound,
                                                      p.noise_multiplier, self.noise)
            d_loss = penalty = math.nan
        return feedback[0], {"d_loss": d_loss, "device_loss": float(device_loss.detach()[0]),
                             "stepped": float(finite), "r1_penalty": penalty}


def node_data(cfg, spec, node_config):
    """(own data, None) from the node's ``data-dir``, else (None, its share of the partition), built once per
    run and process."""
    from datamodules import FederatedData

    key = json.dumps([json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
                      str(node_config.get("data-dir"))])
    if key not in NODE_DATA:
        NODE_DATA.clear()
        if "data-dir" in node_config:              # this node's own data, nothing else
            NODE_DATA[key] = (node_batch_source(Path(str(node_config["data-dir"])), spec), None)
        else:
            datamodule = FederatedData(cfg)
            datamodule.setup("fit")
            NODE_DATA[key] = (None, datamodule)
    return NODE_DATA[key]
