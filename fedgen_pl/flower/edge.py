"""The ServerApp: ``fedgen train``'s engine (Lightning, callbacks, run directory) with the edge tier
(community generators, their Adam states, the edge rule) and the cloud tier, and ``FlowerDevices``, the
transport to the devices: it learns the topology, sends each device its generated batches and gets back its
loss and feedback. Messages: ``query.topology`` once at the start; ``train.step`` per piece of work."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from fedgen_pl.config import devices_per_community
from fedgen_pl.errors import ConfigError
from fedgen_pl.flower.clock import WallClock
from fedgen_pl.flower.wire import from_record, global_device_index, record_bytes, to_record
from fedgen_pl.tiers import DeviceStep

server_app = ServerApp()
log = logging.getLogger("fedgen")
REFIND_S = 2.0          # while a device is gone: how often the nodes that joined since are asked where they belong
SUPPORTED_MODELS = ("fedgen_fr", "fedgen_lr", "md_gan")    # every device has its own D; no D averaging


def work_tensors(module, devices: list[int], real_index: dict[int, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each device's work in flight (the module's buffers): its two generated batches and their labels, and in
    test mode the indices of its real batch."""
    work = module.inflight()
    if module.stores_fake_g:
        fake_g = work.fake_g[devices]
    else:             # sync: G_k(z_g) is what the edge will regenerate at the update (G_k does not move before)
        with torch.no_grad():
            index = torch.tensor(devices, device=work.z_g.device)
            fake_g = module.generate(work.z_g[index], work.y_g[index], index)
    out = []
    for row, g in enumerate(devices):
        tensors = {"fake_d": work.fake_d[g], "y_d": work.y_d[g], "fake_g": fake_g[row], "y_g": work.y_g[g]}
        if g in real_index:
            tensors["real_index"] = real_index[g]
        out.append(tensors)
    return out


def first_discriminators(module) -> dict[int, dict[str, torch.Tensor]]:
    """Test mode: every device's discriminator as the in-process run starts it."""
    state = module.device_discriminators.stacked_state()
    return {g: {name: value[int(module.discriminators.group[g])] for name, value in state.items()}
            for g in range(module.num_devices)}


def claimed_device(node: int, reply: Message) -> tuple[int, int]:
    """(community, device) that a node's answer to ``query.topology`` claims (its ``--node-config``)."""
    info = reply.content["node"]
    if "community" not in info or "device" not in info:
        raise ConfigError(f"node {node} has no community/device in its --node-config", where="deploy topology")
    return int(info["community"]), int(info["device"])


REPLY_STATS = ("d_loss", "device_loss", "stepped", "r1_penalty")     # what a device's reply carries beside the feedback


def checked_reply(feedback, stats, shape: tuple) -> tuple | None:
    """A device's reply as (feedback, d_loss, L_kj, stepped, r1_penalty), or None when it is not one: the
    feedback must be a float32 tensor of its work's shape and the four statistics numbers (network input:
    checked)."""
    numbers = [stats.get(k) for k in REPLY_STATS] if isinstance(stats, dict) else []
    if not (torch.is_tensor(feedback) and feedback.dtype == torch.float32 and tuple(feedback.shape) == shape
            and len(numbers) == len(REPLY_STATS)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)):
        return None
    return feedback, float(numbers[0]), float(numbers[1]), numbers[2] > 0, float(numbers[3])



def feedback_rows(module, fake_g: torch.Tensor, arrived: torch.Tensor, devices: torch.Tensor | None, take):
    """The arrived devices' replies as ``tiers.device_iteration`` returns them (``DeviceStep``): d_loss, L_kj,
    the feedback and the R1 penalty in rows (``devices``, or all N), and which devices' D stepped (``[N]``).
    ``take(g)`` gives device g's checked reply, or None (its row stays 0 and it did not step: the engine does
    not use it)."""
    rows = list(range(module.num_devices)) if devices is None else devices.tolist()
    d_loss, device_loss, penalty = torch.zeros(len(rows)), torch.zeros(len(rows)), torch.zeros(len(rows))
    feedback = torch.zeros_like(fake_g, device="cpu")
    stepped = torch.zeros(module.num_devices, dtype=torch.bool)
    for row, g in enumerate(rows):
        reply = take(g) if bool(arrived[g]) else None
        if reply is not None:
            feedback[row], d_loss[row], device_loss[row], stepped[g], penalty[row] = reply
    target = fake_g.device
    return DeviceStep(d_loss.to(target), device_loss.to(target), feedback.to(target), stepped.to(target),
                      penalty.to(target))


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
        self.pending: dict[str, int] = {}           # message id -> device, sent and not answered
        self.malformed = 0                          # replies that were not a device's feedback, dropped
        self.pushed_at = np.zeros(sum(devices_per_community(cfg)))

    # -- topology ----------------------------------------------------------------------------------
    def learn_topology(self, timeout_s: float) -> None:
        """Ask every connected node where it belongs; refuse a topology that is not the experiment's."""
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
            key = claimed_device(node, reply)
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

    def clock_for(self, module) -> WallClock:
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
        state = None
        messages = []
        for g, tensors in zip(devices, work_tensors(module, devices, real_index)):
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

    def exchange(self, module, due: list[int], real_index: dict, unfinished: np.ndarray, asynchronous: bool,
                 timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Send ``due`` their work, then wait. Sync: until every pending device of an ``unfinished`` community
        replied or timed out. Async: until at least one reply is in (or nothing unfinished is left to wait
        for). Returns bool ``[N]``: who replied (kept for ``feedback``), who failed (error reply or timeout)."""
        if due:
            self.pending.update(self.push(module, due, real_index))
            self.pushed_at[due] = time.time()
        started = time.time()
        arrived = np.zeros(len(unfinished), dtype=bool)
        failed = np.zeros(len(unfinished), dtype=bool)
        while True:
            now = time.time()
            for g, reply in self.pull(self.pending).items():
                self.reply_s.append(now - self.pushed_at[g])
                if reply.has_content():
                    self.replies[g] = reply
                    arrived[g] = True
                else:                                   # an error reply: the device failed
                    failed[g] = True
            self.pending = {mid: g for mid, g in self.pending.items() if not (arrived[g] or failed[g])}
            waiting = np.zeros(len(unfinished), dtype=bool)
            waiting[list(self.pending.values())] = True
            late = waiting & (now - self.pushed_at > timeout_s)
            failed |= late
            waiting &= ~late
            if asynchronous:
                if arrived.any() or (failed.any() and not (waiting & unfinished).any()):
                    break
            elif not (waiting & unfinished).any():
                break
            time.sleep(self.poll_s)
        if not asynchronous:
            self.exchange_s.append(time.time() - started)
        self.pending = {mid: g for mid, g in self.pending.items() if not failed[g]}
        return arrived, failed

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
        """The arrived devices' replies, checked (``feedback_rows``)."""
        def take(g: int):
            reply = self.replies.pop(g, None)
            if reply is None:
                return None
            try:
                stats, record = dict(reply.content["stats"]), reply.content["feedback"]
                tensor = from_record(record).get("feedback")
            except (KeyError, TypeError, ValueError):
                stats, record, tensor = {}, None, None
            checked = checked_reply(tensor, stats, tuple(fake_g.shape[1:]))
            if checked is None:
                self.malformed += 1
                return None
            self.bytes_sent["device_to_edge"] += record_bytes(record) + 8 * len(stats)
            if stats.get("restarted", 0) > 0:
                module.counters["device_restarts"] += 1
            return checked

        return feedback_rows(module, fake_g, arrived, devices, take)

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
                "malformed_replies": self.malformed,
                "node_data_label_counts": {str(g): c for g, c in sorted(self.node_label_counts.items())},
                "nodes": {str(g): node for g, node in sorted(self.node_of.items())}}


class StreamDevices:
    """The stream path (``deploy.transport=stream``): Flower registers the nodes and starts each device once,
    with a ``train.run`` message that carries the stream's address and the run's secret (nowhere else); then
    every local iteration travels on the device's stream (fedgen_pl/flower/stream.py): a work frame down, a
    feedback frame up. A device whose stream ends is given up like a timeout, and counted."""

    def __init__(self, grid: Grid, cfg, poll_s: float = 0.05):
        self.flower, self.cfg = FlowerDevices(grid, cfg, poll_s), cfg
        self.stream = self.counters = None
        self.starts: dict[str, int] = {}          # the train.run message of every device
        self.replies: dict[int, tuple] = {}       # device -> its feedback not yet used by an edge
        self.gone: set[int] = set()
        self.asked: dict[str, int] = {}           # query.topology message -> a node that joined during the run
        self.asked_nodes: set[int] = set()        # nodes already asked (once each)
        self.next_look = 0.0
        self.exchange_s, self.reply_s = self.flower.exchange_s, self.flower.reply_s
        self.bytes_sent = self.flower.bytes_sent

    def learn_topology(self, timeout_s: float) -> None:
        self.flower.learn_topology(timeout_s)

    def use_node_data(self, module) -> None:
        self.flower.use_node_data(module)

    def clock_for(self, module) -> WallClock:
        """Open the stream, start every device and wait until each has joined, then the clock."""
        from fedgen_pl.flower.stream import EdgeStream, encode, new_secret

        module.counters.setdefault("device_restarts", 0)
        module.counters.setdefault("stream_refused", 0)
        B, numel = self.cfg.data.batch_size, int(np.prod(module.spec.data_shape))
        limit = 4 * len(encode("work", {"x": torch.zeros(4 * B * numel + 4 * B)})) + (1 << 16)
        N = module.num_devices
        tls, stream = None, {"address": str(self.cfg.deploy.stream_address), "max_frame_bytes": limit}
        if self.cfg.deploy.stream_certificates:           # TLS, with the SuperLink's certificates
            folder = Path(self.cfg.deploy.stream_certificates).expanduser()
            tls = (folder / "server.key").read_bytes(), (folder / "server.pem").read_bytes()
            stream["root_certificate"] = (folder / "ca.crt").read_text()     # public: how devices check the edge
        self.stream = EdgeStream(str(self.cfg.deploy.stream_address), new_secret(), N, limit, tls=tls)
        self.counters = self.stream.counters      # kept after the stream closes, for the summary
        stream["secret"] = self.stream.secret.hex()
        run = {"config": self.flower.config_json, "iteration": 0, "spec": json.dumps(module.spec.to_dict())}
        first = first_discriminators(module) if self.cfg.deploy.test_mode else {}
        self.start_content = {"run": run, "stream": stream}
        self.starts = {}
        self.start(list(range(N)), first)
        deadline, joined = time.time() + float(self.cfg.deploy.exchange_timeout_s), set()
        while len(joined) < N and time.time() < deadline:
            item = self.stream.receive(timeout=0.1)
            if item is not None and item[1] == "joined":
                joined.add(item[0])
        if len(joined) < N:
            self.close()
            raise RuntimeError(f"devices {sorted(set(range(N)) - joined)} did not join the stream within "
                               f"deploy.exchange_timeout_s={self.cfg.deploy.exchange_timeout_s:g} s")
        self.module = module
        self.work_shape = (self.cfg.data.batch_size, *module.spec.data_shape)
        self.sent_iteration: dict[int, int] = {}
        return WallClock(self, module)

    def start(self, devices: list[int], first: dict | None = None) -> None:
        """One ``train.run`` message per device: it starts the device's task for the rest of the run (test mode:
        with the in-process run's first discriminator; a device started again gets a fresh one)."""
        messages = []
        for g in devices:
            content = {"run": ConfigRecord(self.start_content["run"]),
                       "stream": ConfigRecord(self.start_content["stream"])}
            if first and g in first:
                content["d_init"] = to_record(first[g])
            messages.append(Message(RecordDict(content), dst_node_id=self.flower.node_of[g], message_type="train.run"))
        self.starts.update(zip(self.flower.grid.push_messages(messages), devices))

    def look_for_moved_devices(self) -> None:
        """A SuperNode that restarts joins under a new node id: while a device is gone, every
        ``REFIND_S`` seconds ask the nodes that joined since where they belong; one that claims a gone device
        takes its place and is sent the device's ``train.run`` (it then rejoins as any restarted device)."""
        now = time.time()
        grid, flower = self.flower.grid, self.flower
        if self.asked:
            for reply in grid.pull_messages(list(self.asked)):
                node = self.asked.pop(reply.metadata.reply_to_message_id, None)
                if node is None or not reply.has_content():
                    continue
                counts = devices_per_community(self.cfg)
                try:                                                   # network input: a place that exists
                    c, d = claimed_device(node, reply)
                    if not (0 <= c < len(counts) and 0 <= d < counts[c]):
                        raise ValueError
                except (ConfigError, ValueError, TypeError, KeyError):
                    log.warning("deploy: node %s joined with no place in the topology; ignored", node)
                    continue
                g = global_device_index(self.cfg, c, d)
                if g in self.gone:
                    log.warning("deploy: device %d is back on node %s (a new node id)", g, node)
                    flower.node_of[g] = node
                    self.start([g])
        if not self.gone or now < self.next_look:
            return
        self.next_look = now + REFIND_S
        new = [n for n in grid.get_node_ids() if n not in self.asked_nodes and n not in flower.node_of.values()]
        self.asked_nodes.update(new)
        if new:
            ids = grid.push_messages([Message(RecordDict({}), dst_node_id=n, message_type="query.topology") for n in new])
            self.asked.update(zip(ids, new))

    def exchange(self, module, due: list[int], real_index: dict, unfinished: np.ndarray, asynchronous: bool,
                 timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Work frames to ``due``, then wait on the stream as ``FlowerDevices.exchange`` waits on messages. A
        device whose stream ends is given up for its work in flight and started again (a new ``train.run``
        message to its node, or to the node that took its place: ``look_for_moved_devices``); when it rejoins
        it is counted in ``faults/device_restarts``."""
        from fedgen_pl.flower.stream import encode

        N = len(unfinished)
        arrived, failed = np.zeros(N, dtype=bool), np.zeros(N, dtype=bool)
        pushed_at = getattr(self, "pushed_at", np.zeros(N))
        self.pushed_at = pushed_at
        self.pending = getattr(self, "pending", set())
        for g, tensors in zip(due, work_tensors(module, due, real_index)):
            frame = encode("work", tensors, iteration=int(module.iteration))
            if g in self.gone or not self.stream.send(g, frame):
                failed[g] = True
                continue
            self.bytes_sent["edge_to_device"] += len(frame)
            self.sent_iteration[g] = int(module.iteration)
            pushed_at[g] = time.time()
            self.pending.add(g)
        started = time.time()
        while True:
            now = time.time()
            self.look_for_moved_devices()
            item = self.stream.receive(timeout=self.flower.poll_s or 0.001)
            if item is not None:
                g, kind, meta, tensors = item
                if kind == "feedback" and g in self.pending:
                    reply = checked_reply(tensors.get("feedback"), meta, self.work_shape)
                    answered = meta.get("iteration") == self.sent_iteration.get(g) and set(tensors) == {"feedback"}
                    if reply is None or not answered:
                        self.counters.malformed += 1          # not the feedback to its work: dropped, it stays pending
                        log.warning("stream: dropped device %d's feedback (not the answer to its work)", g)
                        continue
                    self.reply_s.append(now - pushed_at[g])
                    self.replies[g] = reply
                    self.bytes_sent["device_to_edge"] += int(meta.get("_bytes", 0))
                    arrived[g] = True
                    self.pending.discard(g)
                elif kind == "left":
                    self.gone.add(g)
                    if g in self.pending:
                        failed[g] = True
                        self.pending.discard(g)
                    self.start([g])
                elif kind == "joined" and g in self.gone:      # a device back: fresh D, counted
                    self.gone.discard(g)
                    module.counters["device_restarts"] += 1
            waiting = np.zeros(N, dtype=bool)
            waiting[list(self.pending)] = True
            late = waiting & (now - pushed_at > timeout_s)
            failed |= late
            self.pending -= set(np.flatnonzero(late).tolist())
            waiting &= ~late
            # test mode: every reply of the exchange is in before the event, as with the virtual clock's equal
            # delays (the run then equals the in-process one); otherwise async takes the first arrivals
            if asynchronous and not self.cfg.deploy.test_mode:
                if arrived.any() or (failed.any() and not (waiting & unfinished).any()):
                    break
            elif not (waiting & unfinished).any():
                break
        if not asynchronous:
            self.exchange_s.append(time.time() - started)
        module.counters["stream_refused"] = self.stream.counters.refused
        return arrived, failed

    def feedback(self, module, work, fake_g: torch.Tensor, arrived: torch.Tensor, devices: torch.Tensor | None):
        """The arrived devices' feedback frames, checked on arrival (``exchange``)."""
        return feedback_rows(module, fake_g, arrived, devices, lambda g: self.replies.pop(g, None))

    def summary(self) -> dict:
        summary = {**self.flower.summary(), "transport": "stream"}
        c = getattr(self, "counters", None)
        if c is not None:
            summary["stream"] = {"refused": c.refused, "malformed": c.malformed, "oversized": c.oversized,
                                 "connections": c.connections, "reconnections": c.reconnections}
        return summary

    def close(self) -> None:
        """Stop every device's task (a ``stop`` frame ends its ``train.run``) and the stream."""
        from fedgen_pl.flower.stream import encode

        if self.stream is None:
            return
        stopped = set(self.stream.connected)
        for g in stopped:
            self.stream.send(g, encode("stop"))
        # Only the tasks told to stop answer: a device that is gone (its node killed, its task dead) never will.
        latest = {g: message for message, g in self.starts.items()}       # a device started again: its last task
        pending = {message: g for g, message in latest.items() if g in stopped}
        deadline = time.time() + 10
        while pending and time.time() < deadline:
            for reply in self.flower.grid.pull_messages(list(pending)):
                pending.pop(reply.metadata.reply_to_message_id, None)
            time.sleep(0.05)
        self.stream.stop()
        self.stream = None


# How the Flower path treats the config keys (tests/fedgen_pl/test_flower_app.py enumerates every key).
# The ServerApp runs the whole engine but the devices' side, so every key is honoured as in-process except:
# - REFUSED: a device-side setting the ClientApp does not implement; only this value can be deployed;
# - REPLACED_BY_REAL_TIME: the virtual clock's simulation of arrival times; real replies replace it
#   (``deploy.exchange_timeout_s`` is the sync timeout), and a non-default value is logged once.
REFUSED = {"federation.fake_labels": "device", "model.unheld_label_fakes": "judge", "clock.lr_scale": False,
           "model.non_saturating_warmup": 0}
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
    devices = (StreamDevices if cfg.deploy.transport == "stream" else FlowerDevices)(grid, cfg)
    devices.learn_topology(timeout_s=float(cfg.deploy.exchange_timeout_s))
    try:
        run_dir = train(cfg, device_transport=devices)
    finally:
        if hasattr(devices, "close"):
            devices.close()
    print(f"[fedgen] deployed run finished: {run_dir}", flush=True)
