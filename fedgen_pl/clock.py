"""The virtual clock: a deterministic discrete-event simulation of devices in integer ticks (docs/method.md §5).

Each device has a fixed speed factor; each dispatch (the edge sending it generated samples) takes
``max(1, round(speed * delay))`` ticks, ``delay`` drawn from a seeded distribution, until the device's
feedback arrives at its edge. A dispatch may also be lost (``dropout``): the device goes offline and
rejoins ``rejoin_ticks`` later.

Events: ``next_event()`` returns the next tick at which some edge updates its generator and which
devices' feedback it uses (``M_k``):
- ``sync``: a community's edge waits for every device it dispatched, or until ``timeout`` ticks after
  the dispatch; devices still missing then are excluded (counted) and their work is discarded;
- ``async``: an edge updates at every tick at which feedback arrives, with the devices arriving then.

Rounds: a community that has made ``local_iters`` updates in the round parks its devices (their
feedback, if any, is held) until the cloud aggregates, at the tick the last community finished.
All of the clock's state is plain numbers (saved in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEVER = np.iinfo(np.int64).max


@dataclass
class Event:
    tick: int
    arrived: np.ndarray          # bool [N]: devices whose feedback the edges use now (M_k)
    timed_out: np.ndarray        # bool [N]: devices a sync edge stopped waiting for
    updating: np.ndarray         # bool [K]: communities whose generator updates now


def draw_speeds(num_devices: int, cfg, rng: np.random.Generator) -> np.ndarray:
    """Per-device speed factors: 1 everywhere, or ``straggler_slowdown`` for a ``straggler_fraction``
    of devices (chosen at random) when ``delay`` is ``tiers``."""
    speeds = np.ones(num_devices)
    if cfg.delay == "tiers":
        count = int(round(cfg.straggler_fraction * num_devices))
        speeds[rng.permutation(num_devices)[:count]] = cfg.straggler_slowdown
    return speeds


def draw_delays(count: int, cfg, rng: np.random.Generator) -> np.ndarray:
    kind = cfg.delay
    if kind == "constant":
        return np.full(count, float(cfg.delay_low))
    if kind in ("uniform", "tiers"):
        return rng.integers(cfg.delay_low, cfg.delay_high + 1, size=count).astype(float)
    if kind == "lognormal":
        return rng.lognormal(np.log(cfg.delay_median), cfg.delay_sigma, size=count)
    raise ValueError(f"clock.delay: unknown distribution '{kind}'")


class VirtualClock:
    def __init__(self, devices_per_community: list[int], update: str, local_iters: int, cfg, seed: int):
        self.community = np.repeat(np.arange(len(devices_per_community)), devices_per_community)
        self.num_devices, self.num_communities = len(self.community), len(devices_per_community)
        self.update, self.local_iters, self.cfg = update, local_iters, cfg
        self.rng = np.random.default_rng(seed + 7919)
        self.speeds = draw_speeds(self.num_devices, cfg, self.rng)
        self.tick = 0
        self.busy = np.zeros(self.num_devices, dtype=bool)               # dispatched, feedback not yet used
        self.arrival = np.full(self.num_devices, NEVER, dtype=np.int64)  # when it lands (NEVER: lost)
        self.dispatched_at = np.zeros(self.num_devices, dtype=np.int64)
        self.offline_until = np.zeros(self.num_devices, dtype=np.int64)  # a lost dispatch: back online then
        self.updates = np.zeros(self.num_communities, dtype=np.int64)    # edge updates this round
        self.dropouts = 0
        self.timeouts = 0

    # -- state queries ---------------------------------------------------------------------------
    def round_finished(self) -> bool:
        return bool((self.updates >= self.local_iters).all())

    def _unfinished_device(self) -> np.ndarray:
        return (self.updates < self.local_iters)[self.community]

    def idle_devices(self) -> np.ndarray:
        """Online devices without work whose community still updates this round (edges send them work)."""
        return ~self.busy & (self.offline_until <= self.tick) & self._unfinished_device()

    # -- dispatching -----------------------------------------------------------------------------
    def dispatch(self, devices: np.ndarray) -> np.ndarray:
        """Send work to ``devices`` (bool [N]) now; returns those that received it (online, not busy).
        A dispatch is lost with probability ``dropout``: the device goes offline for ``rejoin_ticks``."""
        devices = devices & ~self.busy & (self.offline_until <= self.tick)
        count = int(devices.sum())
        if count:
            delays = draw_delays(count, self.cfg, self.rng)
            ticks = np.maximum(1, np.round(self.speeds[devices] * delays)).astype(np.int64)
            lost = self.rng.random(count) < self.cfg.dropout
            self.arrival[devices] = np.where(lost, NEVER, self.tick + ticks)
            self.dispatched_at[devices] = self.tick
            self.busy[devices] = True
            self.offline_until[np.flatnonzero(devices)[lost]] = self.tick + self.cfg.rejoin_ticks
            self.dropouts += int(lost.sum())
        return devices

    # -- events ----------------------------------------------------------------------------------
    def next_event(self) -> Event:
        """Advance ``tick`` to the next edge update (or to a lost device's rejoin) and return it."""
        N, K = self.num_devices, self.num_communities
        unfinished = self.updates < self.local_iters
        busy = self.busy & unfinished[self.community]
        lost = busy & (self.arrival == NEVER)
        # Edges give up on lost work when the device rejoins (async) or at the timeout (sync).
        rejoin = self.offline_until[lost].min() if lost.any() else NEVER
        if self.update == "async":
            landing = busy & ~lost
            tick = min(int(self.arrival[landing].min()) if landing.any() else NEVER, int(rejoin))
            if tick == NEVER:
                raise RuntimeError("virtual clock: no device of an unfinished community has work in flight")
            self.tick = max(self.tick, tick)          # feedback held over a round boundary lands now
            arrived = busy & (self.arrival <= self.tick)
            timed_out = np.zeros(N, dtype=bool)
            abandoned = lost & (self.offline_until <= self.tick)
        else:
            ready = np.full(K, NEVER, dtype=np.int64)
            for k in np.flatnonzero(unfinished):
                members = busy & (self.community == k)
                if members.any():
                    deadline = int(self.dispatched_at[members].max()) + int(self.cfg.timeout)
                    ready[k] = min(int(self.arrival[members].max()), deadline)
                else:   # every device of k is offline: the edge resumes when the first one rejoins
                    offline = (self.community == k) & (self.offline_until > self.tick)
                    ready[k] = int(self.offline_until[offline].min()) if offline.any() else NEVER
            tick = int(ready.min())
            if tick == NEVER:
                raise RuntimeError("virtual clock: no device of an unfinished community has work in flight")
            self.tick = max(self.tick, tick)
            due = (ready == tick)[self.community] & busy
            arrived = due & (self.arrival <= self.tick)
            timed_out = due & ~arrived
            self.timeouts += int(timed_out.sum())
            abandoned = timed_out
        for mask in (arrived, abandoned):
            self.busy[mask] = False
            self.arrival[mask] = NEVER
        updating = np.zeros(K, dtype=bool)
        updating[np.unique(self.community[arrived])] = True
        self.updates[updating] += 1
        return Event(tick=self.tick, arrived=arrived, timed_out=timed_out, updating=updating)

    def start_round(self) -> None:
        """After the cloud aggregated (at ``tick``, the last community's finishing tick)."""
        self.updates[:] = 0

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {name: getattr(self, name).tolist() for name in
                 ("speeds", "busy", "arrival", "dispatched_at", "offline_until", "updates")}
        state.update(tick=self.tick, dropouts=self.dropouts, timeouts=self.timeouts,
                     rng=self.rng.bit_generator.state)
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in ("speeds", "busy", "arrival", "dispatched_at", "offline_until", "updates"):
            setattr(self, name, np.asarray(state[name], dtype=getattr(self, name).dtype))
        self.tick, self.dropouts, self.timeouts = state["tick"], state["dropouts"], state["timeouts"]
        self.rng.bit_generator.state = state["rng"]
