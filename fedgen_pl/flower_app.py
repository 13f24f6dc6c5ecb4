"""fedgen-pl as a Flower app (flwr 1.42): the three tiers on separate machines, devices as SuperNodes.

- The **ServerApp** runs ``fedgen train``'s engine (Lightning, callbacks, run directory) with the edge
  tier (community generators, their Adam states, the edge rule) and the cloud tier (global generator,
  aggregation rule). Only the devices' side of each local iteration leaves the process: ``FlowerDevices``
  sends each device its generated batches and gets back its loss and feedback.
- The **ClientApp** is one device. Its discriminator and Adam state live in the node's context
  (``context.state``); its data is its share of the partition that the experiment and seed define
  (built on the node, never sent). It runs the same pure device-side functions (fedgen_pl/tiers.py) as
  the in-process engine.

Messages: ``query.topology`` (each node's ``--node-config``: community and device) once at the start;
``train.step`` per local iteration. Sync only: an edge waits for its devices up to
``deploy.exchange_timeout_s``; feedback that does not come (a failed or stopped device) is left out of
that update and counted in ``faults/timeouts``.

A device that restarts (its SuperNode process, and with it ``context.state``, is lost) starts again
from a fresh discriminator and Adam state; it says so in its reply and the ServerApp counts it in
``faults/device_restarts``.
"""

from __future__ import annotations

import json
import shlex
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from fedgen_pl.errors import ConfigError
from fedgen_pl.tiers import device_losses, discriminator_loss, sample_feedback

client_app = ClientApp()
server_app = ServerApp()

SUPPORTED_MODELS = ("fedgen_fr",)


# -- the wire: tensors <-> Flower records ------------------------------------------------------------
def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: Array(t.detach().cpu().contiguous().numpy()) for name, t in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


def global_device_index(cfg, community: int, device: int) -> int:
    from fedgen_pl.config import devices_per_community

    counts = devices_per_community(cfg)
    return sum(counts[:community]) + device


# -- the device (ClientApp) ------------------------------------------------------------------------
@client_app.query("topology")
def topology(message: Message, context: Context) -> Message:
    """This node's place in the federation, from its ``--node-config``."""
    node = {key: context.node_config[key] for key in ("community", "device") if key in context.node_config}
    return Message(RecordDict({"node": ConfigRecord(node)}), reply_to=message)


@client_app.train("step")
def device_step(message: Message, context: Context) -> Message:
    """One local iteration of this device (method §2, steps 1-3): D_kj steps on its real batch and
    G_k(z_d), then scores G_k(z_g) with the updated D_kj and returns L_kj and d l_kj / d G_k(z_g)."""
    from datamodules import FederatedDataModule
    from fedgen_pl.networks import build_discriminator

    run = message.content["run"]
    cfg = OmegaConf.create(json.loads(str(run["config"])))
    work = from_record(message.content["work"])
    community, device = int(context.node_config["community"]), int(context.node_config["device"])
    g = global_device_index(cfg, community, device)
    torch.set_num_threads(1)

    datamodule = FederatedDataModule(cfg)          # this device's share: the partition of (experiment, seed)
    datamodule.setup("fit")
    m = cfg.model
    restarted = 0.0
    if "discriminator" in context.state:            # this device's D and Adam state from its last step
        saved = from_record(context.state["discriminator"])
        discriminator = build_discriminator(m, datamodule.spec)
        discriminator.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("d.")})
    else:
        torch.manual_seed(int(cfg.seed) * 100003 + g)
        discriminator = build_discriminator(m, datamodule.spec)
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
    if "real_index" in work:
        index = work["real_index"].long()
    else:
        seed = int(cfg.seed) * 1_000_003 + g * 7919 + int(run["iteration"])
        u = torch.rand(B, generator=torch.Generator().manual_seed(seed))
        index = datamodule.device_offsets[g] + (u * datamodule.device_sizes[g]).long()
    real_x = datamodule.normalise(datamodule.train_x[index])
    real_y = datamodule.train_y[index]

    # 1-2. D_kj on the real batch and G_k(z_d)
    logits = discriminator(torch.cat([real_x, work["fake_d"]]), torch.cat([real_y, work["y_d"]]))
    d_loss = discriminator_loss(logits[None, :B], logits[None, B:])
    optimizer.zero_grad(set_to_none=True)
    d_loss.sum().backward()
    finite = bool(torch.isfinite(d_loss).all()) and all(
        p.grad is None or bool(torch.isfinite(p.grad).all()) for p in discriminator.parameters())
    if finite:
        optimizer.step()
    # 3. L_kj and the feedback with the updated D_kj
    fake_g = work["fake_g"][None].clone().requires_grad_(True)
    for p in discriminator.parameters():
        p.requires_grad_(False)
    logits = discriminator(fake_g[0], work["y_g"])[None]
    device_loss, objective = device_losses(logits, cfg.model.gan_loss)
    feedback = sample_feedback(objective, fake_g)[0]
    for p in discriminator.parameters():
        p.requires_grad_(True)

    state = {f"d.{k}": v for k, v in discriminator.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        state.update({f"t.{i}": torch.as_tensor(s["step"]), f"m.{i}": s["exp_avg"], f"v.{i}": s["exp_avg_sq"]})
    context.state["discriminator"] = to_record(state)
    stats = MetricRecord({"d_loss": float(d_loss.detach()[0]), "device_loss": float(device_loss.detach()[0]),
                          "stepped": float(finite), "restarted": restarted})
    return Message(RecordDict({"feedback": to_record({"feedback": feedback}), "stats": stats}), reply_to=message)


# -- the edge and cloud (ServerApp) ----------------------------------------------------------------
class FlowerDevices:
    """The devices' side of every local iteration, over Flower messages (``FederatedGAN.device_transport``)."""

    def __init__(self, grid: Grid, cfg, poll_s: float = 0.05):
        self.grid, self.cfg, self.poll_s = grid, cfg, poll_s
        self.config_json = json.dumps(OmegaConf.to_container(cfg, resolve=True))
        self.node_of: dict[int, int] = {}           # global device index -> Flower node id
        self.exchange_s: list[float] = []
        self.bytes_sent = {"edge_to_device": 0, "device_to_edge": 0}
        self.started: set[int] = set()

    def learn_topology(self, timeout_s: float) -> None:
        """Ask every connected node where it belongs; refuse a topology that is not the experiment's."""
        from fedgen_pl.config import devices_per_community

        counts = devices_per_community(self.cfg)
        expected = {(c, d) for c, n in enumerate(counts) for d in range(n)}
        deadline = time.time() + timeout_s
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < len(expected) and time.time() < deadline:
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        replies = self._exchange([Message(RecordDict({}), dst_node_id=n, message_type="query.topology")
                                  for n in nodes], timeout_s)
        seen: dict[tuple[int, int], int] = {}
        for node, reply in replies.items():
            if reply is None or not reply.has_content():
                continue
            info = reply.content["node"]
            if "community" not in info or "device" not in info:
                raise ConfigError(f"node {node} has no community/device in its --node-config",
                                  where="deploy topology")
            key = (int(info["community"]), int(info["device"]))
            if key in seen:
                raise ConfigError(f"two nodes claim community {key[0]} device {key[1]}", where="deploy topology")
            seen[key] = node
        if set(seen) != expected:
            missing = sorted(expected - set(seen))
            extra = sorted(set(seen) - expected)
            raise ConfigError(f"the nodes do not match the experiment's {len(counts)} communities x {counts} devices"
                              f" (missing {missing}, unknown {extra}); start one SuperNode per device with "
                              f"--node-config \"community=<k> device=<j>\"", where="deploy topology")
        self.node_of = {global_device_index(self.cfg, c, d): node for (c, d), node in seen.items()}

    def _exchange(self, messages: list[Message], timeout_s: float) -> dict[int, Message | None]:
        """Push, then pull with a short poll until every reply is in or the time is up; missing -> None."""
        ids = list(self.grid.push_messages(messages))
        node_of_id = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages)}
        replies: dict[int, Message | None] = {m.metadata.dst_node_id: None for m in messages}
        pending = set(ids)
        deadline = time.time() + timeout_s
        while pending and time.time() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                source = reply.metadata.reply_to_message_id
                if source in pending:
                    pending.discard(source)
                    replies[node_of_id[source]] = reply
            if pending:
                time.sleep(self.poll_s)
        return replies

    def feedback(self, module, work, fake_g: torch.Tensor, arrived: torch.Tensor):
        from fedgen_pl.system import DeviceReply

        N = module.num_devices
        module.counters.setdefault("device_restarts", 0)
        test_mode = bool(self.cfg.deploy.test_mode)
        if test_mode:
            index = module.data.last_real_index      # [N, B] drawn by the server's sampler (the partition is known)
        messages, devices = [], arrived.nonzero().flatten().tolist()
        for g in devices:
            tensors = {"fake_d": work.fake_d[g], "y_d": work.y_d[g], "fake_g": fake_g[g], "y_g": work.y_g[g]}
            if test_mode:
                tensors["real_index"] = index[g]
            content = {"work": to_record(tensors),
                       "run": ConfigRecord({"config": self.config_json, "iteration": int(module.iteration)})}
            if test_mode and g not in self.started:
                state = module.device_discriminators.stacked_state()
                member = int(module.discriminators.group[g])
                content["d_init"] = to_record({name: value[member] for name, value in state.items()})
            self.bytes_sent["edge_to_device"] += sum(record_bytes(r) for r in content.values()
                                                     if isinstance(r, ArrayRecord)) + len(self.config_json)
            messages.append(Message(RecordDict(content), dst_node_id=self.node_of[g], message_type="train.step"))
        started = time.time()
        replies = self._exchange(messages, float(self.cfg.deploy.exchange_timeout_s))
        self.exchange_s.append(time.time() - started)

        d_loss, device_loss = torch.zeros(N), torch.zeros(N)
        feedback = torch.zeros_like(fake_g)
        stepped = torch.zeros(N, dtype=torch.bool)
        for g in devices:
            reply = replies.get(self.node_of[g])
            if reply is None or not reply.has_content():
                module.counters["timeouts"] = module.counters.get("timeouts", 0) + 1
                continue
            self.started.add(g)
            stats = reply.content["stats"]
            feedback[g] = from_record(reply.content["feedback"])["feedback"]
            self.bytes_sent["device_to_edge"] += record_bytes(reply.content["feedback"]) + 4 * len(stats)
            d_loss[g], device_loss[g] = stats["d_loss"], stats["device_loss"]
            stepped[g] = stats["stepped"] > 0
            if stats["restarted"] > 0:
                module.counters["device_restarts"] = module.counters.get("device_restarts", 0) + 1
        target = fake_g.device
        return DeviceReply(d_loss.to(target), device_loss.to(target), feedback.to(target), stepped.to(target))

    def summary(self) -> dict:
        times = np.array(self.exchange_s) if self.exchange_s else np.zeros(1)
        return {"backend": "flower", "exchanges": len(self.exchange_s),
                "exchange_s_mean": round(float(times.mean()), 3), "exchange_s_median": round(float(np.median(times)), 3),
                "exchange_s_max": round(float(times.max()), 3), "bytes_sent": dict(self.bytes_sent),
                "nodes": {str(g): node for g, node in sorted(self.node_of.items())}}


def check_deployable(cfg) -> None:
    if cfg.model.name not in SUPPORTED_MODELS:
        raise ConfigError(f"the Flower backend runs {', '.join(SUPPORTED_MODELS)} for now, not '{cfg.model.name}'; "
                          "use fedgen train for the others", where="model.name")
    if cfg.federation["update"] != "sync":
        raise ConfigError("the Flower backend runs sync federations for now; use fedgen train for async",
                          where="federation.update")
    if cfg.federation.fake_labels != "device" or cfg.model.unheld_label_fakes != "judge":
        raise ConfigError("the Flower backend supports the default fake-label protocol only",
                          where="federation.fake_labels")


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """``flwr run . <federation> --run-config 'overrides="experiment=gaussian_grid ..."'``: train through the nodes."""
    from fedgen_pl.config import load_config
    from fedgen_pl.train import train

    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg = load_config(overrides)
    check_deployable(cfg)
    devices = FlowerDevices(grid, cfg)
    devices.learn_topology(timeout_s=float(cfg.deploy.exchange_timeout_s))
    run_dir = train(cfg, device_transport=devices)
    print(f"[fedgen] deployed run finished: {run_dir}", flush=True)
