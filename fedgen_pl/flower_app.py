"""fedgen-pl as a Flower app (flwr 1.42): the three tiers on separate machines, devices as SuperNodes.

- The **ServerApp** runs ``fedgen train``'s engine (Lightning, callbacks, run directory) with the edge
  tier (community generators, their Adam states, the edge rule) and the cloud tier (global generator,
  aggregation rule). Only the devices' side of each local iteration leaves the process: ``FlowerDevices``
  sends each device its generated batches and gets back its loss and feedback.
- The **ClientApp** is one device. Its discriminator and Adam state live in the node's context
  (``context.state``); its data is its share of the partition that the experiment and seed define,
  built on the node from the datasets under its ``data-root`` node config (else ``data.root``), never
  sent. It runs the same pure device-side functions (fedgen_pl/tiers.py) as the in-process engine.

Messages: ``query.topology`` (each node's ``--node-config``: community and device) once at the start;
``train.step`` per piece of work. ``WallClock`` stands in for the virtual clock, so the engine's step loop
is unchanged: sync, an edge waits for its devices up to ``deploy.exchange_timeout_s``; async, an edge
updates on every arrival (Eq. 5 weights, staleness in G_k versions, as in-process). Feedback that does
not come in time, or a failed device, is left out of that update and counted in ``faults/timeouts``.

A device that restarts (its SuperNode process, and with it ``context.state``, is lost) starts again
from a fresh discriminator and Adam state; it says so in its reply and the ServerApp counts it in
``faults/device_restarts``.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from fedgen_pl.errors import ConfigError
from fedgen_pl.tiers import device_iteration

client_app = ClientApp()
server_app = ServerApp()

SUPPORTED_MODELS = ("fedgen_fr", "fedgen_lr", "md_gan")    # every device has its own D; no D averaging
NODE_DATA: dict[str, object] = {}    # the ClientApp's data for the run it serves (one entry)


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


# -- the edge and cloud (ServerApp) ----------------------------------------------------------------
class FlowerDevices:
    """The devices of a run, reached through Flower: their place in the federation (``learn_topology``),
    the work in flight to them and their replies. ``clock_for(module)`` is the run's clock (it pushes the
    work and waits for replies); ``feedback`` hands the replies to the module's local update
    (``FederatedGAN.device_transport``)."""

    def __init__(self, grid: Grid, cfg, poll_s: float = 0.05):
        self.grid, self.cfg, self.poll_s = grid, cfg, poll_s
        self.config_json = json.dumps(OmegaConf.to_container(cfg, resolve=True))
        self.node_of: dict[int, int] = {}           # global device index -> Flower node id
        self.exchange_s: list[float] = []           # sync: push to the last reply of every local iteration
        self.reply_s: list[float] = []              # every reply: push to arrival
        self.bytes_sent = {"edge_to_device": 0, "device_to_edge": 0}
        self.initialised: set[int] = set()          # devices that have their first weights (test mode)
        self.replies: dict[int, Message] = {}       # device -> its reply not yet used by an edge
        self.node_label_counts: dict[int, list[int]] = {}   # devices with their own data (data-dir)

    # -- topology ----------------------------------------------------------------------------------
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
        ids = list(self.grid.push_messages([Message(RecordDict({}), dst_node_id=n, message_type="query.topology")
                                            for n in nodes]))
        node_of_id = dict(zip(ids, nodes))
        replies, pending = {}, set(ids)
        deadline = time.time() + timeout_s
        while pending and time.time() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                if reply.metadata.reply_to_message_id in pending:
                    pending.discard(reply.metadata.reply_to_message_id)
                    replies[node_of_id[reply.metadata.reply_to_message_id]] = reply
            if pending:
                time.sleep(self.poll_s)
        seen: dict[tuple[int, int], int] = {}
        for node, reply in replies.items():
            if not reply.has_content():
                continue
            info = reply.content["node"]
            if "community" not in info or "device" not in info:
                raise ConfigError(f"node {node} has no community/device in its --node-config",
                                  where="deploy topology")
            key = (int(info["community"]), int(info["device"]))
            if "label_counts" in info:
                if self.cfg.deploy.test_mode:
                    raise ConfigError(f"node {node} has its own data-dir; deploy.test_mode needs the shared "
                                      "partition on every node", where="deploy.test_mode")
                self.node_label_counts[global_device_index(self.cfg, *key)] = [int(c) for c in info["label_counts"]]
            if key in seen:
                raise ConfigError(f"two nodes claim community {key[0]} device {key[1]}", where="deploy topology")
            seen[key] = node
        if set(seen) != expected:
            missing = sorted(expected - set(seen))
            extra = sorted(set(seen) - expected)
            raise ConfigError(f"the nodes do not match the experiment's {len(counts)} communities x {counts} devices"
                              f" (missing {missing}, unknown {extra}); start one SuperNode per device with "
                              f"--node-config 'community=<k> device=<j>'", where="deploy topology")
        self.node_of = {global_device_index(self.cfg, c, d): node for (c, d), node in seen.items()}

    def clock_for(self, module) -> "WallClock":
        module.counters.setdefault("device_restarts", 0)
        return WallClock(self, module)

    def use_node_data(self, module) -> None:
        """Devices with their own data: the edge draws their fakes' labels from the label counts they
        reported, not from the ServerApp's partition (``federation.fake_labels=device``)."""
        if not self.node_label_counts:
            return
        from datamodules.federated import fake_label_probs

        data = module.data
        for g, counts in self.node_label_counts.items():
            if len(counts) > data.label_histogram.shape[1]:
                raise ConfigError(f"device {g}'s data has labels up to {len(counts) - 1}, the federation "
                                  f"{data.label_histogram.shape[1]}", where="deploy topology")
            row = torch.zeros(data.label_histogram.shape[1])
            row[:len(counts)] = torch.tensor(counts, dtype=torch.float32)
            data.label_histogram[g] = row.to(data.label_histogram.device)
        data.fake_label_probs = {k: v.to(data.label_histogram.device) for k, v in
                                 fake_label_probs(data.label_histogram.cpu(), module.spec.community_of_device).items()}
        module.attach_data(data)                 # the labels each discriminator holds, again

    # -- one exchange ------------------------------------------------------------------------------
    def push(self, module, devices: list[int], real_index: dict[int, torch.Tensor]) -> dict[str, int]:
        """Send each of ``devices`` its work in flight (the module's buffers); returns message id -> device."""
        work = module.inflight()
        if module.stores_fake_g:
            fake_g = work.fake_g[devices]
        else:             # sync: G_k(z_g) is what the edge will regenerate at the update (G_k does not move before)
            with torch.no_grad():
                index = torch.tensor(devices, device=work.z_g.device)
                fake_g = module.generate(work.z_g[index], work.y_g[index], index)
        state = None
        messages = []
        for row, g in enumerate(devices):
            tensors = {"fake_d": work.fake_d[g], "y_d": work.y_d[g], "fake_g": fake_g[row], "y_g": work.y_g[g]}
            if g in real_index:
                tensors["real_index"] = real_index[g]
            content = {"work": to_record(tensors),
                       "run": ConfigRecord({"config": self.config_json, "iteration": int(module.iteration),
                                            "spec": json.dumps(module.spec.to_dict())})}
            if self.cfg.deploy.test_mode and g not in self.initialised:
                state = state if state is not None else module.device_discriminators.stacked_state()
                member = int(module.discriminators.group[g])
                content["d_init"] = to_record({name: value[member] for name, value in state.items()})
                self.initialised.add(g)
            self.bytes_sent["edge_to_device"] += sum(record_bytes(r) for r in content.values()
                                                     if isinstance(r, ArrayRecord)) + len(self.config_json)
            messages.append(Message(RecordDict(content), dst_node_id=self.node_of[g], message_type="train.step"))
        ids = list(self.grid.push_messages(messages))
        return dict(zip(ids, devices))

    def pull(self, pending: dict[str, int]) -> dict[int, Message]:
        """The replies in now among ``pending`` (message id -> device), by device."""
        got = {}
        if pending:
            for reply in self.grid.pull_messages(list(pending)):
                source = reply.metadata.reply_to_message_id
                if source in pending:
                    got[pending[source]] = reply
        return got

    def feedback(self, module, work, fake_g: torch.Tensor, arrived: torch.Tensor, devices: torch.Tensor | None):
        """The arrived devices' replies as ``tiers.device_iteration`` returns them: d_loss, L_kj and the
        feedback in rows (``devices``, or all N), and which devices' D stepped (``[N]``)."""
        rows = list(range(module.num_devices)) if devices is None else devices.tolist()
        n = len(rows)
        d_loss, device_loss = torch.zeros(n), torch.zeros(n)
        feedback = torch.zeros_like(fake_g, device="cpu")
        stepped = torch.zeros(module.num_devices, dtype=torch.bool)
        for row, g in enumerate(rows):
            reply = self.replies.pop(g, None)
            if not bool(arrived[g]) or reply is None:
                continue
            stats = reply.content["stats"]
            feedback[row] = from_record(reply.content["feedback"])["feedback"]
            self.bytes_sent["device_to_edge"] += record_bytes(reply.content["feedback"]) + 8 * len(stats)
            d_loss[row], device_loss[row] = stats["d_loss"], stats["device_loss"]
            stepped[g] = stats["stepped"] > 0
            if stats["restarted"] > 0:
                module.counters["device_restarts"] += 1
        target = fake_g.device
        return d_loss.to(target), device_loss.to(target), feedback.to(target), stepped.to(target)

    def summary(self) -> dict:
        def stats(values):
            values = np.array(values) if values else np.zeros(1)
            return {"mean": round(float(values.mean()), 3), "median": round(float(np.median(values)), 3),
                    "max": round(float(values.max()), 3)}
        exchanges = stats(self.exchange_s)
        return {"backend": "flower", "update": self.cfg.federation["update"], "exchanges": len(self.exchange_s),
                "exchange_s_mean": exchanges["mean"], "exchange_s_median": exchanges["median"],
                "exchange_s_max": exchanges["max"], "replies": len(self.reply_s), "reply_s": stats(self.reply_s),
                # the edges and the cloud share the ServerApp: nothing crosses a network between them
                "bytes_sent": {**self.bytes_sent, "edge_to_cloud": 0, "cloud_to_edge": 0},
                "node_data_label_counts": {str(g): c for g, c in sorted(self.node_label_counts.items())},
                "nodes": {str(g): node for g, node in sorted(self.node_of.items())}}


class WallClock:
    """The virtual clock's interface (fedgen_pl/clock.py) over real replies, so the engine's step loop
    runs unchanged: ``dispatch`` marks devices busy; ``next_event`` pushes the work dispatched since (the
    module has filled its buffers by then) and waits. Sync: until every busy device of the unfinished
    communities replied, each given ``deploy.exchange_timeout_s``. Async: until at least one reply is in.
    A device that has not replied within the timeout, or whose reply is an error, is given up (counted as
    a timeout, like the virtual clock's) and gets fresh work later. ``tick`` is milliseconds of wall time.
    When no device at all answers in ``MAX_SILENT_EVENTS`` exchanges in a row, the run stops with an error."""

    MAX_SILENT_EVENTS = 3

    def __init__(self, transport: FlowerDevices, module):
        self.transport, self.module = transport, module
        self.virtual = module.clock          # checkpoints keep its format, so eval, sample and report read them
        sizes = module.federation.generators.sizes
        self.community = np.repeat(np.arange(len(sizes)), sizes)
        self.num_devices, self.num_communities = len(self.community), len(sizes)
        self.update = module.cfg.federation["update"]
        self.local_iters = int(module.cfg.federation.local_iters)
        self.timeout_s = float(module.cfg.deploy.exchange_timeout_s)
        self.busy = np.zeros(self.num_devices, dtype=bool)
        self.to_push = np.zeros(self.num_devices, dtype=bool)      # dispatched, work not sent yet
        self.index_due = np.zeros(self.num_devices, dtype=bool)    # test mode: real-batch indices to capture
        self.real_index: dict[int, torch.Tensor] = {}
        self.pending: dict[str, int] = {}                          # message id -> device
        self.pushed_at = np.zeros(self.num_devices)
        self.updates = np.zeros(self.num_communities, dtype=np.int64)
        self.started = time.time()
        self.silent_events = 0
        self.node_data_applied = False
        self.tick = 0
        self.dropouts = 0
        self.timeouts = 0

    def round_finished(self) -> bool:
        return bool((self.updates >= self.local_iters).all())

    def idle_devices(self) -> np.ndarray:
        return ~self.busy & (self.updates < self.local_iters)[self.community]

    def _capture_real_index(self) -> None:
        """The module drew the last dispatch's real batches right after ``dispatch``: keep their indices."""
        if self.index_due.any():
            drawn = self.module.data.last_real_index
            for g in np.flatnonzero(self.index_due):
                self.real_index[int(g)] = drawn[g].cpu()
            self.index_due[:] = False

    def dispatch(self, devices: np.ndarray) -> np.ndarray:
        if not self.node_data_applied:
            self.transport.use_node_data(self.module)
            self.node_data_applied = True
        self._capture_real_index()
        devices = devices & ~self.busy
        self.busy |= devices
        self.to_push |= devices
        if self.transport.cfg.deploy.test_mode:
            self.index_due |= devices
        return devices

    def next_event(self):
        from fedgen_pl.clock import Event

        self._capture_real_index()
        new = [int(g) for g in np.flatnonzero(self.to_push)]
        if new:
            index = {g: self.real_index.pop(g) for g in new if g in self.real_index}
            self.pending.update(self.transport.push(self.module, new, index))
            self.pushed_at[new] = time.time()
            self.to_push[:] = False
        started = time.time()
        unfinished = (self.updates < self.local_iters)[self.community]
        arrived = np.zeros(self.num_devices, dtype=bool)
        failed = np.zeros(self.num_devices, dtype=bool)
        while True:
            now = time.time()
            for g, reply in self.transport.pull(self.pending).items():
                self.transport.reply_s.append(now - self.pushed_at[g])
                if reply.has_content():
                    self.transport.replies[g] = reply
                    arrived[g] = True
                else:                                   # an error reply: the device failed
                    failed[g] = True
            self.pending = {mid: g for mid, g in self.pending.items() if not (arrived[g] or failed[g])}
            waiting = np.zeros(self.num_devices, dtype=bool)
            waiting[list(self.pending.values())] = True
            late = waiting & (now - self.pushed_at > self.timeout_s)
            failed |= late
            waiting &= ~late
            if self.update == "async":
                if arrived.any() or (failed.any() and not (waiting & unfinished).any()):
                    break
            elif not (waiting & unfinished).any():
                break
            time.sleep(self.transport.poll_s)
        if self.update == "sync":
            self.transport.exchange_s.append(time.time() - started)
        self.silent_events = 0 if arrived.any() else self.silent_events + 1
        if self.silent_events >= self.MAX_SILENT_EVENTS:
            raise RuntimeError(f"no device answered in {self.silent_events} exchanges in a row (each waited up to "
                               f"deploy.exchange_timeout_s={self.timeout_s:g} s); are the SuperNodes running? "
                               "Their logs are in the run's deploy_logs/ (fedgen deploy-local)")
        self.pending = {mid: g for mid, g in self.pending.items() if not failed[g]}
        self.busy[arrived | failed] = False
        self.timeouts += int(failed.sum())
        updating = np.zeros(self.num_communities, dtype=bool)
        updating[np.unique(self.community[arrived])] = True
        self.updates[updating] += 1
        self.tick = int(1000 * (time.time() - self.started))
        return Event(tick=self.tick, arrived=arrived, timed_out=failed, updating=updating)

    def start_round(self) -> None:
        self.updates[:] = 0

    def state_dict(self) -> dict:
        state = self.virtual.state_dict()
        state.update(tick=self.tick, updates=self.updates.tolist(), timeouts=self.timeouts)
        return state

    def load_state_dict(self, state: dict) -> None:
        raise RuntimeError("a deployed run cannot be resumed yet: its devices' state lives on the nodes")


# How the Flower path treats the config keys (tests/fedgen_pl/test_flower_app.py enumerates every key).
# The ServerApp runs the whole engine but the devices' side, so every key is honoured as in-process except:
# - REFUSED: a device-side setting the ClientApp does not implement; only this value can be deployed;
# - REPLACED_BY_REAL_TIME: the virtual clock's simulation of arrival times; real replies replace it
#   (``deploy.exchange_timeout_s`` is the sync timeout), and a non-default value is logged once.
REFUSED = {"federation.fake_labels": "device", "model.unheld_label_fakes": "judge", "clock.lr_scale": False}
REPLACED_BY_REAL_TIME = ("clock.delay", "clock.delay_low", "clock.delay_high", "clock.delay_median",
                         "clock.delay_sigma", "clock.straggler_fraction", "clock.straggler_slowdown", "clock.dropout",
                         "clock.rejoin_ticks", "clock.timeout", "clock.max_lr_scale")


def check_deployable(cfg) -> None:
    if cfg.model.name not in SUPPORTED_MODELS:
        raise ConfigError(f"the Flower backend runs {', '.join(SUPPORTED_MODELS)} for now, not '{cfg.model.name}'; "
                          "use fedgen train for the others", where="model.name")
    for key, deployable in REFUSED.items():
        value = OmegaConf.select(cfg, key)
        if value != deployable:
            raise ConfigError(f"'{value}' is not implemented on deployed devices; leave it at "
                              f"{str(deployable).lower()} for the Flower backend, or use fedgen train", where=key)
    from fedgen_pl.config import load_config

    defaults = load_config([])
    changed = [k for k in REPLACED_BY_REAL_TIME if OmegaConf.select(cfg, k) != OmegaConf.select(defaults, k)]
    if changed:
        print(f"[fedgen] deploy: {', '.join(changed)} simulate arrival times in-process; real replies replace "
              f"them here", flush=True)


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
