"""The ClientApp: one device. Its discriminator and Adam state live in the node's context
(``context.state``); its data is its share of the partition that the experiment and seed define, built on
the node from the datasets under its ``data-root`` node config (else ``data.root``), or its own
``data-dir``, never sent. Its step is the engine's own ``tiers.device_iteration``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import OmegaConf
from torch.func import functional_call

from fedgen_pl.flower.wire import from_record, global_device_index, to_record
from fedgen_pl.tiers import device_iteration

client_app = ClientApp()
NODE_DATA: dict[str, object] = {}    # the ClientApp's data for the run it serves (one entry)


@client_app.query("topology")
def topology(message: Message, context: Context) -> Message:
    """This node's place in the federation, from its ``--node-config``; with a ``data-dir``, also how many
    samples of each label it holds (what the edge needs for the ``device`` fake labels)."""
    node = {key: context.node_config[key] for key in ("community", "device") if key in context.node_config}
    if "data-dir" in context.node_config:
        _, y = read_node_data(Path(str(context.node_config["data-dir"])))
        node["label_counts"] = [int(c) for c in np.bincount(y.numpy())]
    return Message(RecordDict({"node": ConfigRecord(node)}), reply_to=message)


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


@client_app.train("step")
def device_step(message: Message, context: Context) -> Message:
    """One local iteration of this device (method §2, steps 1-3): D_kj steps on its real batch and
    G_k(z_d), then scores G_k(z_g) with the updated D_kj and returns L_kj and d l_kj / d G_k(z_g)."""
    from datamodules import FederatedDataModule
    from fedgen_pl.gan import real_labels
    from fedgen_pl.networks import build_discriminator
    from fedgen_pl.recipes import recipe_of

    run = message.content["run"]
    cfg = OmegaConf.create(json.loads(str(run["config"])))
    work = from_record(message.content["work"])
    community, device = int(context.node_config["community"]), int(context.node_config["device"])
    if "data-root" in context.node_config:            # where this node keeps the datasets (else the run's data.root)
        cfg.data.root = str(context.node_config["data-root"])
    g = global_device_index(cfg, community, device)
    torch.set_num_threads(1)

    from fedgen_pl.spec import FederationSpec

    spec = FederationSpec.from_dict(json.loads(str(run["spec"])))
    key = json.dumps([str(run["config"]), str(cfg.data.root), str(context.node_config.get("data-dir"))])
    if key not in NODE_DATA:                       # built once per run and process, not per message
        NODE_DATA.clear()
        if "data-dir" in context.node_config:      # this node's own data, nothing else
            NODE_DATA[key] = node_batch_source(Path(str(context.node_config["data-dir"])), spec)
        else:                                      # its share of the partition of (experiment, seed)
            NODE_DATA[key] = FederatedDataModule(cfg)
            NODE_DATA[key].setup("fit")
    own = NODE_DATA[key] if isinstance(NODE_DATA[key], tuple) else None
    datamodule = None if own is not None else NODE_DATA[key]
    m = cfg.model
    conditioning = recipe_of(m.name).conditioning  # the recipe's discriminator and real-batch labels
    restarted = 0.0
    if "discriminator" in context.state:            # this device's D and Adam state from its last step
        saved = from_record(context.state["discriminator"])
        discriminator = build_discriminator(m, spec, conditioning)
        discriminator.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("d.")})
    else:
        torch.manual_seed(int(cfg.seed) * 100003 + g)
        discriminator = build_discriminator(m, spec, conditioning)
        if "d_init" in message.content:              # test mode: the in-process run's first weights
            discriminator.load_state_dict(from_record(message.content["d_init"]))
        saved = {}
        restarted = float(int(run["iteration"]) > 0)  # a device that lost its state starts afresh
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=m.d_lr, betas=(m.beta1, m.beta2))
    moments = {int(k.split(".")[1]) for k in saved if k.startswith("m.")}
    if moments:
        optimizer.load_state_dict({"state": {i: {"step": saved[f"t.{i}"], "exp_avg": saved[f"m.{i}"],
                                                 "exp_avg_sq": saved[f"v.{i}"]} for i in moments},
                                   "param_groups": optimizer.state_dict()["param_groups"]})

    # The real batch: the indices the server drew (test mode), else drawn here from this device's share.
    B = work["fake_d"].shape[0]
    seed = int(cfg.seed) * 1_000_003 + g * 7919 + int(run["iteration"])
    u = torch.rand(B, generator=torch.Generator().manual_seed(seed))
    if own is not None:
        index = (u * len(own[1])).long()
        real_x, labels = own[0][index], own[1][index]
    else:
        index = (work["real_index"].long() if "real_index" in work
                 else datamodule.device_offsets[g] + (u * datamodule.device_sizes[g]).long())
        real_x, labels = datamodule.normalise(datamodule.train_x[index]), datamodule.train_y[index]
    real_y = real_labels(conditioning, labels, community)

    # Method §2, steps 1-3, for this one device (a batch of one row): the engine's own device_iteration.
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

    d_loss, device_loss, feedback, finite = device_iteration(
        discriminate, update, real_x[None], real_y[None], work["fake_d"][None], work["y_d"][None],
        work["fake_g"][None], work["y_g"][None], cfg.model.gan_loss)
    feedback = feedback[0]

    state = {f"d.{k}": v for k, v in discriminator.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        state.update({f"t.{i}": torch.as_tensor(s["step"]), f"m.{i}": s["exp_avg"], f"v.{i}": s["exp_avg_sq"]})
    context.state["discriminator"] = to_record(state)
    stats = MetricRecord({"d_loss": float(d_loss.detach()[0]), "device_loss": float(device_loss.detach()[0]),
                          "stepped": float(finite), "restarted": restarted})
    return Message(RecordDict({"feedback": to_record({"feedback": feedback}), "stats": stats}), reply_to=message)
