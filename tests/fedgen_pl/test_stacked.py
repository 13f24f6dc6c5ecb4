"""The vectorised local iteration (stacked modules + vmap) equals a plain per-device loop."""

import pytest
import torch

from tests.reference import LoopFederation
from tests.conftest import build_system, clone_batch


def _compare_states(system, loop, opt_g, opt_d, atol):
    for n, disc in enumerate(loop.discriminators):
        for name, p in disc.named_parameters():
            stacked = system.device_discriminators.stacked_params()[name][n]
            torch.testing.assert_close(stacked, p, atol=atol, rtol=0, msg=f"D_{n}.{name}")
            st, ref = opt_d.state[system.device_discriminators.stacked_params()[name]], loop.d_opts[n].state[p]
            torch.testing.assert_close(st["exp_avg"][n], ref["exp_avg"], atol=atol, rtol=0)
            torch.testing.assert_close(st["exp_avg_sq"][n], ref["exp_avg_sq"], atol=atol, rtol=0)
            assert float(st["step"]) == float(ref["step"])
    for k, gen in enumerate(loop.generators):
        for name, p in gen.named_parameters():
            stacked = system.community_generators.stacked_params()[name][k]
            torch.testing.assert_close(stacked, p, atol=atol, rtol=0, msg=f"G_{k}.{name}")
            st, ref = opt_g.state[system.community_generators.stacked_params()[name]], loop.g_opts[k].state[p]
            torch.testing.assert_close(st["exp_avg"][k], ref["exp_avg"], atol=atol, rtol=0)
            torch.testing.assert_close(st["exp_avg_sq"][k], ref["exp_avg_sq"], atol=atol, rtol=0)


@pytest.mark.parametrize("overrides", [
    (),
    ("federation.tau_edge=0.0", "model.gan_loss=saturating"),
    ("federation.tau_edge=-2.0", "model.conditional=false"),
    ("federation.devices_per_community=[1, 3, 2]",),     # ragged communities go through the padded path
    ("trainer.member_execution=loop",),
    ("trainer.member_execution=loop", "federation.devices_per_community=[1, 3, 2]"),
], ids=["default", "tau0-saturating", "negative-tau-unconditional", "ragged", "loop", "loop-ragged"])
def test_vectorised_steps_equal_per_device_loop(overrides):
    system, datamodule = build_system(*overrides)
    loop = LoopFederation(system)
    opt_g, opt_d = system.configure_optimizers()
    system.dispatch(system.clock.idle_devices())
    for _ in range(4):
        batch = clone_batch(system.inflight())
        stats = system.step_event(opt_g, opt_d)
        assert bool(stats.arrived.all())
        d_loss, device_loss, weights = loop.local_iteration(batch)
        torch.testing.assert_close(stats.d_loss, d_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(stats.device_loss, device_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(stats.edge_weights, weights, atol=1e-5, rtol=0)
    _compare_states(system, loop, opt_g, opt_d, atol=1e-5)


def test_generator_pathways_stay_per_community():
    """Device n's samples come from its own community's generator only (also when ragged)."""
    system, datamodule = build_system("federation.devices_per_community=[2, 2, 1]")
    batch = system.draw_batch()
    fake = system.generate(batch.z_g, batch.y_g)
    fake[2:4].sum().backward()      # devices 2 and 3 belong to community 1
    grads = [p.grad for p in system.community_generators.stacked_params().values()]
    assert all(g[0].abs().max() == 0 and g[2].abs().max() == 0 for g in grads)
    assert any(g[1].abs().max() > 0 for g in grads)


def test_member_execution_auto_picks_loop_only_for_convolutions_on_cpu():
    from fedgen_pl.networks import DCGANDiscriminator, MLPDiscriminator
    from fedgen_pl.stacked import StackedModule

    x = torch.zeros(1)
    assert StackedModule(DCGANDiscriminator((1, 8, 8), 0, 4, 0), 2).execution(x) == "loop"
    assert StackedModule(MLPDiscriminator(2, 0, 8), 2).execution(x) == "vmap"
    assert StackedModule(MLPDiscriminator(2, 0, 8), 2, execution="loop").execution(x) == "loop"


def test_loop_and_vmap_execution_give_the_same_outputs_and_gradients():
    """Both member executions, on a convolutional network with two outputs (the VAE)."""
    from fedgen_pl.stacked import StackedModule
    from fedgen_pl.vae import VAE

    torch.manual_seed(0)
    members = [VAE((1, 8, 8), 3, num_labels=2, channels=4) for _ in range(3)]
    x, y, eps = torch.randn(3, 5, 1, 8, 8).tanh(), torch.randint(0, 2, (3, 5)), torch.randn(3, 5, 3)
    results = []
    for execution in ("loop", "vmap"):
        stacked = StackedModule(members, execution=execution)
        reconstruction, kl = stacked(x, y, eps)
        (reconstruction.sum() + 2 * kl.sum()).backward()
        results.append((reconstruction, kl, [p.grad for p in stacked.parameters()]))
    (r1, k1, g1), (r2, k2, g2) = results
    torch.testing.assert_close(r1, r2, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
