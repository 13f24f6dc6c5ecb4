"""fedgen-pl as a Flower app (flwr 1.42), one file per role: the three tiers on separate machines,
devices as SuperNodes.

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

- ``wire.py``: tensors <-> Flower records, a device's global index;
- ``client.py``: the ClientApp (one device per node): its three message handlers;
- ``device.py``: the device: its data, its discriminator, ``tiers.device_iteration``;
- ``edge.py``: the ServerApp (edges and cloud): the devices reached through Flower, what can be deployed;
- ``clock.py``: ``WallClock``, the virtual clock's interface over real replies (bookkeeping only, no I/O).
"""
