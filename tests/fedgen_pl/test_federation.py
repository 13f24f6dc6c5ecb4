"""The virtual clock, the asynchronous rule, faults and communication accounting."""

import math

import numpy as np
import torch
from omegaconf import OmegaConf

from fedgen_pl.aggregation import async_edge_weights
from fedgen_pl.clock import NEVER, VirtualClock
from tests.conftest import build_system
from pytorch_lightning.plugins.precision import Precision


def test_async_weights_hand_computed():
    staleness = torch.tensor([0, 2, 1, 0, 3])
    arrived = torch.tensor([True, True, False, True, True])
    community = torch.tensor([0, 0, 0, 1, 1])
    w = async_edge_weights(staleness, arrived, community, 2)
    # community 0: M = {0, 1}, |M| = 2: exp(0)/2, exp(-2)/2; device 2 did not arrive
    # community 1: M = {3, 4}: exp(0)/2, exp(-3)/2 -- not renormalised
    expected = torch.tensor([0.5, math.exp(-2) / 2, 0.0, 0.5, math.exp(-3) / 2])
    torch.testing.assert_close(w, expected)


def _clock_cfg(**values):
    base = dict(delay="uniform", delay_low=10, delay_high=60, delay_median=30.0, delay_sigma=0.5,
                straggler_fraction=0.2, straggler_slowdown=4.0, dropout=0.0, rejoin_ticks=50, timeout=1000,
                lr_scale=False, max_lr_scale=10.0)
    base.update(values)
    return OmegaConf.create(base)


def test_async_events_take_devices_arriving_together():
    clock = VirtualClock([3, 2], "async", local_iters=100, cfg=_clock_cfg(), seed=0)
    clock.dispatch(clock.idle_devices())
    arrivals = clock.arrival.copy()
    event = clock.next_event()
    assert event.tick == arrivals.min()
    assert event.arrived.tolist() == (arrivals == arrivals.min()).tolist()
    assert event.updating.tolist() == [bool(event.arrived[:3].any()), bool(event.arrived[3:].any())]


def test_sync_edge_waits_for_all_its_devices():
    clock = VirtualClock([3, 2], "sync", local_iters=100, cfg=_clock_cfg(), seed=0)
    clock.dispatch(clock.idle_devices())
    arrivals = clock.arrival.copy()
    ready = [arrivals[:3].max(), arrivals[3:].max()]
    event = clock.next_event()
    first = int(np.argmin(ready))
    assert event.tick == min(ready) and event.updating.tolist() == [first == 0, first == 1]
    members = slice(0, 3) if first == 0 else slice(3, 5)
    assert event.arrived[members].all() and not event.arrived.sum() > (3 if first == 0 else 2)


def test_same_seed_same_event_order():
    def events(seed):
        clock = VirtualClock([3, 2, 4], "async", local_iters=1000, cfg=_clock_cfg(delay="lognormal"), seed=seed)
        out = []
        for _ in range(40):
            clock.dispatch(clock.idle_devices())
            e = clock.next_event()
            out.append((e.tick, tuple(np.flatnonzero(e.arrived))))
        return out

    assert events(3) == events(3)
    assert events(3) != events(4)


def test_dropped_device_is_excluded_counted_and_rejoins():
    # sync: a lost dispatch is waited for until the timeout, then excluded and counted
    clock = VirtualClock([2], "sync", local_iters=1000, cfg=_clock_cfg(delay="constant", timeout=100), seed=0)
    clock.dispatch(np.array([True, False]))
    clock.cfg.dropout = 0.999999   # the next dispatch is lost
    clock.dispatch(np.array([False, True]))
    assert clock.arrival[1] == NEVER and clock.dropouts == 1 and clock.offline_until[1] == 50
    event = clock.next_event()
    assert event.tick == 100 and event.arrived.tolist() == [True, False] and event.timed_out.tolist() == [False, True]
    assert clock.timeouts == 1
    clock.cfg.dropout = 0.0
    # back online after rejoin_ticks (it was lost at tick 0, so from tick 50): it gets work again
    assert clock.idle_devices().tolist() == [True, True]
    assert clock.dispatch(clock.idle_devices()).tolist() == [True, True]
    assert clock.next_event().arrived.tolist() == [True, True]


def test_async_abandons_lost_work_when_the_device_rejoins():
    clock = VirtualClock([2], "async", local_iters=1000, cfg=_clock_cfg(delay="constant", delay_low=30), seed=0)
    clock.cfg.dropout = 0.999999
    clock.dispatch(np.array([True, False]))
    clock.cfg.dropout = 0.0
    clock.dispatch(np.array([False, True]))
    e = clock.next_event()                        # device 1 arrives at 30; device 0 is lost
    assert (e.tick, e.arrived.tolist()) == (30, [False, True])
    clock.dispatch(clock.idle_devices())          # device 0 is still offline (until 50)
    assert clock.busy.tolist() == [True, True]
    e = clock.next_event()                        # rejoin event at 50: nothing arrives, device 0 is free
    assert (e.tick, e.arrived.tolist(), e.updating.tolist()) == (50, [False, False], [False])
    assert clock.idle_devices().tolist() == [True, False]


def _train(system, steps):
    opt_g, opt_d = system.configure_optimizers()
    from callbacks import GlobalAggregation

    class _Trainer:
        should_stop = False

        precision_plugin = Precision()      # fp32: no autocast around the round
        loggers = []

    aggregation, trace = GlobalAggregation(), []
    for _ in range(steps):
        stats = system.step_event(opt_g, opt_d)
        trace.append((system.clock.tick, None if stats is None else stats.arrived.nonzero().flatten().tolist()))
        if system.round_complete:      # as training_step does
            system.finished_round = system.end_round()
        aggregation.on_train_batch_end(_Trainer(), system, None, None, 0)
    return trace


def _params(system):
    return {k: v.detach().clone() for k, v in system.state_dict().items()}


def test_async_with_equal_delays_reproduces_sync_exactly():
    common = ["clock.delay=constant", "federation.tau_edge=0.0", "federation.local_iters=3"]
    sync, _ = build_system(*common, "federation.update=sync")
    asyn, _ = build_system(*common, "federation.update=async")
    trace_sync, trace_async = _train(sync, 8), _train(asyn, 8)
    assert trace_sync == trace_async and sync.round == asyn.round == 2
    assert not sync.stores_fake_g and asyn.stores_fake_g   # sync regenerates G_k(z_g) instead of keeping it
    for (name, a), b in zip(_params(sync).items(), _params(asyn).values()):
        if name != "inflight_fake_g":
            assert torch.equal(a, b), name


def test_async_same_seed_same_result_and_staleness_appears():
    overrides = ["federation.update=async", "clock.delay=uniform", "federation.local_iters=4"]
    first, _ = build_system(*overrides)
    second, _ = build_system(*overrides)
    trace = _train(first, 30)
    assert trace == _train(second, 30)
    for (name, a), b in zip(_params(first).items(), _params(second).values()):
        assert torch.equal(a, b), name
    assert first.round >= 1
    assert any(arrived is not None and len(arrived) < 6 for _, arrived in trace)   # partial M_k
    assert int(first.previous_staleness.max()) >= 1                                # stale feedback happened


def test_inactive_devices_untouched_in_async_step():
    """Idle devices keep parameters and optimiser state bit for bit (checked over several events, so
    their Adam moments are non-zero and a plain unmasked step would move them)."""
    system, _ = build_system("federation.update=async", "clock.delay=uniform", "federation.local_iters=50")
    opt_g, opt_d = system.configure_optimizers()
    checked = 0
    for _ in range(25):
        params = {k: v.clone() for k, v in system.device_discriminators.stacked_params().items()}
        state = {k: {n: t.clone() for n, t in opt_d.state[v].items()}
                 for k, v in system.device_discriminators.stacked_params().items() if opt_d.state[v]}
        stats = system.step_event(opt_g, opt_d)
        if stats is None or not state:
            continue
        idle = ~stats.arrived
        for name, value in system.device_discriminators.stacked_params().items():
            assert torch.equal(value[idle], params[name][idle]), name
            assert not torch.equal(value[stats.arrived], params[name][stats.arrived]), name
            for key in ("exp_avg", "exp_avg_sq", "member_step"):
                assert torch.equal(opt_d.state[value][key][idle], state[name][key][idle]), (name, key)
        checked += int(idle.any())
    assert checked >= 10


def test_byte_counts_match_formula():
    system, _ = build_system("clock.delay=constant", "federation.local_iters=2")
    _train(system, 4)           # 2 rounds x 2 local iterations, every device every time
    N, K, B = 6, 3, 16          # SMALL_GRID: 3 communities x 2 devices, batch 16, 2-D points
    point, label = 2 * 4, 8     # float32 x, y ; int64 label
    generator = sum(p.numel() for p in system.global_generator.parameters()) * 4
    # dispatches to every device: at the start, after steps 1 and 3, and after each of the 2 aggregations
    assert system.bytes["edge_to_device"] == 5 * N * (2 * B * point + 2 * B * label)
    assert system.bytes["device_to_edge"] == 4 * N * (4 + B * point)
    assert system.bytes["edge_to_cloud"] == 2 * K * (generator + 4)
    assert system.bytes["cloud_to_edge"] == 2 * K * generator


def test_computing_only_the_reporting_devices_equals_the_masked_full_computation():
    overrides = ["federation.update=async", "clock.delay=uniform", "federation.local_iters=50"]
    subset, _ = build_system(*overrides)
    full, _ = build_system(*overrides)
    full.subset_compute = False
    trace_subset, trace_full = _train(subset, 15), _train(full, 15)
    assert trace_subset == trace_full
    assert any(a is not None and len(a) < 6 for _, a in trace_subset)      # partial events happened
    for (name, a), b in zip(_params(subset).items(), _params(full).values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_the_non_saturating_warmup_rounds_then_the_configured_loss(monkeypatch):
    import fedgen_pl.gan as gan

    system, _ = build_system("model.gan_loss=saturating", "model.non_saturating_warmup=2", "federation.local_iters=2",
                             "federation.global_rounds=4")
    seen, device_iteration = [], gan.device_iteration

    def recording(*args, **kwargs):
        seen.append((system.federation.round, args[8]))     # the generator objective, 9th argument
        return device_iteration(*args, **kwargs)

    monkeypatch.setattr(gan, "device_iteration", recording)
    _train(system, 6)
    assert seen == [(0, "non_saturating")] * 2 + [(1, "non_saturating")] * 2 + [(2, "saturating")] * 2


def test_the_r1_penalty_is_logged_apart_from_the_discriminators_gan_loss():
    """train/d_loss is D's GAN loss with or without the penalty (the health bar's saturation reads it);
    train/r1_penalty, logged only with the penalty on, is its mean over the devices that reported."""
    for gamma in (0.0, 10.0):
        system, _ = build_system(f"model.r1_gamma={gamma}", "clock.delay=constant", "federation.local_iters=2")
        opt_g, opt_d = system.configure_optimizers()
        stats = system.step_event(opt_g, opt_d)
        logged = system.step_metrics(stats)
        count = stats.arrived.sum()
        assert math.isclose(float(logged["train/d_loss"]), float(stats.d_loss.sum() / count), rel_tol=1e-6)
        assert float(logged["train/d_loss"]) < 2.0          # two softplus terms near log 2 each at the start
        if gamma:
            assert float(logged["train/r1_penalty"]) > 0
            assert math.isclose(float(logged["train/r1_penalty"]), float(stats.r1_penalty.sum() / count), rel_tol=1e-6)
        else:
            assert "train/r1_penalty" not in logged and not stats.r1_penalty.any()


def test_the_r1_penalty_in_the_engine_is_each_devices_own_discriminator_on_its_own_real_batch(monkeypatch):
    """Over the stacked discriminators, each device's D loss with the R1 penalty equals a plain loop: its
    member's loss on its real batch and G_k(z_d), plus gamma/2 the mean over its real samples, one at a time,
    of ||grad_x D(x)||^2."""
    import torch.nn.functional as F
    from torch.func import functional_call

    import fedgen_pl.gan as gan

    gamma = 3.0
    system, _ = build_system(f"model.r1_gamma={gamma}", "clock.delay=constant", "federation.local_iters=2")
    calls, device_iteration = [], gan.device_iteration

    def recording(discriminate, update, real_x, real_y, fake_d, y_d, *rest):
        stacked = system.device_discriminators
        before = {name: p.detach().clone() for name, p in stacked.stacked_params().items()}
        out = device_iteration(discriminate, update, real_x, real_y, fake_d, y_d, *rest)
        work = [t.clone() for t in (real_x, real_y, fake_d, y_d)]      # in-flight buffers: the next dispatch reuses them
        calls.append((stacked, before, *work, rest[-1], out.d_loss.detach(), out.r1_penalty.detach()))
        return out

    monkeypatch.setattr(gan, "device_iteration", recording)
    _train(system, 1)
    stacked, before, real_x, real_y, fake_d, y_d, r1_gamma, d_loss, r1 = calls[0]
    assert r1_gamma == gamma and d_loss.shape == r1.shape == (6,)
    for i in range(6):
        def D(x, y, i=i):      # member i on a batch
            return functional_call(stacked.template, {name: value[i] for name, value in before.items()}, (x, y))

        penalty = 0.0
        for b in range(real_x.shape[1]):
            x = real_x[i, b].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x[None], real_y[i, b][None])[0], x)
            penalty += float(grad.pow(2).sum()) / real_x.shape[1]
        plain = float(F.softplus(-D(real_x[i], real_y[i])).mean() + F.softplus(D(fake_d[i], y_d[i])).mean())
        assert math.isclose(float(d_loss[i]), plain, rel_tol=1e-5), i
        assert math.isclose(float(r1[i]), penalty, rel_tol=1e-4), i
        assert penalty > 1e-4       # the penalty is not negligible: the check would see it missing
