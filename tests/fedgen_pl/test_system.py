"""The labels of generated samples (`federation.fake_labels`) and what a device's discriminator does with
labels it holds no data for (`model.conditional_discriminator`, `model.unheld_label_fakes`)."""

import hashlib

import pytest
import torch

from fedgen_pl.cli import main
from fedgen_pl.gan import FederatedGAN
from tests.conftest import SMALL_GRID, build_system

# Two communities; every device holds exactly one label, so a device's histogram and its community's
# label set differ.
SKEWED = ["data.partition=shards", "data.classes_per_device=1",
          "federation.communities=[{data: gaussian_grid, classes: [0, 1, 2]}, {data: gaussian_grid, classes: [3, 4]}]",
          "federation.devices_per_community=3"]


def _state_digest(run_dir) -> str:
    """sha256 of a run's whole final state (parameters, buffers, in-flight work; the EMA left out)."""
    model = FederatedGAN.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("ema."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_a_seeded_run_is_bit_for_bit_repeatable(tmp_path):
    """Two runs of the same seed at one thread end in the same state, bit for bit (on any machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("a", "b"):
            assert main(["train", *SMALL_GRID, *SKEWED, "federation.global_rounds=3", "federation.local_iters=2",
                         "metrics.eval_every=1", "trainer.progress_bar=false", "trainer.log_every_n_iters=1",
                         f"output_dir={tmp_path / name}"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _state_digest(tmp_path / "a") == _state_digest(tmp_path / "b")


def test_community_protocol_changes_the_run(tmp_path):
    """The key is not inert: the same run under `community` trains on other fakes."""
    system_d, _ = build_system(*SKEWED)
    system_c, _ = build_system(*SKEWED, "federation.fake_labels=community")
    system_d.dispatch(system_d.clock.idle_devices())
    system_c.dispatch(system_c.clock.idle_devices())
    assert not torch.equal(system_d.inflight_y_d, system_c.inflight_y_d)


def _one_step(system):
    opt_g, opt_d = system.configure_optimizers()
    system.step_event(opt_g, opt_d)
    return {n: p.detach().clone() for n, p in system.named_parameters()}


def test_skip_leaves_unheld_fakes_out_of_the_discriminator_and_the_feedback():
    """With `unheld_label_fakes=skip`, changing the generated samples of labels a device holds no data for
    changes nothing: not its discriminator's step, not its feedback, not the generator's step."""
    overrides = (*SKEWED, "federation.fake_labels=community", "model.unheld_label_fakes=skip")
    results = []
    for perturb in (False, True):
        system, _ = build_system(*overrides)
        system.dispatch(system.clock.idle_devices())
        unheld = ~system.held_labels.gather(1, system.inflight_y_d)
        assert unheld.any() and (~unheld).any()
        if perturb:     # the in-flight fakes for D, and G_k(z_g) through the stored latents of unheld labels
            system.inflight_fake_d[unheld] += 3.0
            unheld_g = ~system.held_labels.gather(1, system.inflight_y_g)
            system.inflight_z_g[unheld_g] += 5.0
        results.append(_one_step(system))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=0, atol=1e-6, msg=name)


def test_judge_uses_unheld_fakes():
    """The control for the test above: with `judge` the same perturbation changes the discriminators."""
    overrides = (*SKEWED, "federation.fake_labels=community")
    results = []
    for perturb in (False, True):
        system, _ = build_system(*overrides)
        system.dispatch(system.clock.idle_devices())
        if perturb:
            system.inflight_fake_d[~system.held_labels.gather(1, system.inflight_y_d)] += 3.0
        results.append(_one_step(system))
    changed = [n for n in results[0] if n.startswith("device_") and not torch.equal(results[0][n], results[1][n])]
    assert changed


def test_unconditional_discriminator_ignores_labels():
    system, _ = build_system(*SKEWED, "model.conditional_discriminator=false")
    x = torch.randn(system.num_devices, 4, 2)
    a = system.discriminate(x, torch.zeros(system.num_devices, 4, dtype=torch.long))
    b = system.discriminate(x, torch.full((system.num_devices, 4), 3, dtype=torch.long))
    assert torch.equal(a, b)
    assert system.global_generator.num_labels == 5            # the generator stays conditional


@pytest.mark.parametrize("overrides, key", [
    (["federation.fake_labels=everyone"], "federation.fake_labels"),
    (["model.unheld_label_fakes=drop"], "model.unheld_label_fakes"),
    (["experiment=mnist_inverse_noniid", "federation.fake_labels=community"], "federation.fake_labels"),
    (["experiment=mnist_inverse_noniid", "model.conditional_discriminator=false"], "model.conditional_discriminator"),
    (["model.name=fed_vae", "model.unheld_label_fakes=skip"], "model.unheld_label_fakes"),
    (["model.conditional=false", "federation.fake_labels=community"], "federation.fake_labels"),
])
def test_bad_values_exit_2_naming_the_key(overrides, key, tmp_path, capsys):
    assert main(["config", *overrides]) == 2
    err = capsys.readouterr().err
    assert key in err and err.startswith("fedgen:") and "Traceback" not in err
    assert not (tmp_path / "run").exists()
