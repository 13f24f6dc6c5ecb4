"""The Flower ClientApp: one device per node. ``query.topology`` says where the node belongs; ``train.step``
runs one local iteration (the message transport), ``train.run`` serves every iteration of the run over the
stream. The device itself (data, discriminator, step) is ``device.py``; it is imported by the training
handlers only, so the topology query's process starts without torch (on a node, every message is a process
of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import OmegaConf

client_app = ClientApp()


@client_app.query("topology")
def topology(message: Message, context: Context) -> Message:
    """This node's place in the federation, from its ``--node-config``; with a ``data-dir``, also how many
    samples of each label it holds (what the edge needs for the ``device`` fake labels)."""
    node = {key: context.node_config[key] for key in ("community", "device") if key in context.node_config}
    if "data-dir" in context.node_config:
        from fedgen_pl.flower.device import read_node_data

        _, y = read_node_data(Path(str(context.node_config["data-dir"])))
        node["label_counts"] = [int(c) for c in np.bincount(y.numpy())]
    return Message(RecordDict({"node": ConfigRecord(node)}), reply_to=message)


def _run_of(message: Message):
    import torch

    from fedgen_pl.spec import FederationSpec

    run = message.content["run"]
    torch.set_num_threads(1)
    return run, OmegaConf.create(json.loads(str(run["config"]))), FederationSpec.from_dict(json.loads(str(run["spec"])))


@client_app.train("step")
def device_step(message: Message, context: Context) -> Message:
    """One local iteration of this device, its D and Adam state kept in ``context.state`` between messages."""
    from fedgen_pl.flower.device import DeviceWorker
    from fedgen_pl.flower.wire import from_record, to_record

    run, cfg, spec = _run_of(message)
    fresh = "discriminator" not in context.state
    d_init = from_record(message.content["d_init"]) if fresh and "d_init" in message.content else None
    worker = DeviceWorker(cfg, spec, context.node_config, d_init)
    if not fresh:                                    # this device's D and Adam state from its last step
        worker.load_state(from_record(context.state["discriminator"]))
    restarted = float(fresh and int(run["iteration"]) > 0)   # a device that lost its state starts afresh
    feedback, stats = worker.step(from_record(message.content["work"]), int(run["iteration"]))
    context.state["discriminator"] = to_record(worker.state())
    return Message(RecordDict({"feedback": to_record({"feedback": feedback}),
                               "stats": MetricRecord({**stats, "restarted": restarted})}), reply_to=message)


@client_app.train("run")
def device_run(message: Message, context: Context) -> Message:
    """The stream path: one message starts this device for the whole run. It builds its data, D and Adam
    once, connects to the edge's stream with the run's secret, and answers every work frame with a feedback
    frame until the edge sends ``stop``; the reply to the message says how many iterations it served."""
    from fedgen_pl.flower.device import DeviceWorker
    from fedgen_pl.flower.stream import DeviceStream, encode
    from fedgen_pl.flower.wire import from_record

    run, cfg, spec = _run_of(message)
    stream_cfg = message.content["stream"]
    d_init = from_record(message.content["d_init"]) if "d_init" in message.content else None
    worker = DeviceWorker(cfg, spec, context.node_config, d_init)
    root = str(stream_cfg["root_certificate"]).encode() if "root_certificate" in stream_cfg else None
    stream = DeviceStream(str(stream_cfg["address"]), worker.g, bytes.fromhex(str(stream_cfg["secret"])),
                          int(stream_cfg["max_frame_bytes"]), root_certificate=root)
    served = 0
    try:
        while True:
            item = stream.receive()
            if item is None or item[0] == "stop":
                break
            kind, meta, work = item
            feedback, stats = worker.step(work, int(meta["iteration"]))
            stream.send(encode("feedback", {"feedback": feedback}, iteration=int(meta["iteration"]), **stats))
            served += 1
    finally:
        stream.close()
    return Message(RecordDict({"stats": MetricRecord({"served": float(served)})}), reply_to=message)
