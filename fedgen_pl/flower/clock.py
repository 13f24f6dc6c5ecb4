"""``WallClock``: the deployed run's clock (no I/O; the transport in edge.py exchanges the messages)."""

from __future__ import annotations

import time

import numpy as np
import torch

from fedgen_pl.clock import Event


class WallClock:
    """The virtual clock's interface (fedgen_pl/clock.py) over real replies, so the engine's step loop
    runs unchanged. Bookkeeping only: ``dispatch`` marks devices busy; ``next_event`` hands the work
    dispatched since (the module has filled its buffers by then) to the transport's ``exchange``, which does
    all network I/O and returns who replied and who failed, and turns that into the event. A device given up
    (no reply within ``deploy.exchange_timeout_s``, or an error reply) counts as a timeout, like the virtual
    clock's, and gets fresh work later. ``tick`` is milliseconds of wall time. When no device at all answers
    in ``MAX_SILENT_EVENTS`` exchanges in a row, the run stops with an error."""

    MAX_SILENT_EVENTS = 3

    def __init__(self, transport, module):
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
        self._capture_real_index()
        due = [int(g) for g in np.flatnonzero(self.to_push)]
        self.to_push[:] = False
        index = {g: self.real_index.pop(g) for g in due if g in self.real_index}
        unfinished = (self.updates < self.local_iters)[self.community]
        arrived, failed = self.transport.exchange(self.module, due, index, unfinished,
                                                  self.update == "async", self.timeout_s)
        self.silent_events = 0 if arrived.any() else self.silent_events + 1
        if self.silent_events >= self.MAX_SILENT_EVENTS:
            raise RuntimeError(f"no device answered in {self.silent_events} exchanges in a row (each waited up to "
                               f"deploy.exchange_timeout_s={self.timeout_s:g} s); are the SuperNodes running? "
                               "Their logs are in the run's deploy_logs/ (fedgen deploy-local)")
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
