"""The label-related model: L_inv, the cloud's domain classifier, and training in both update modes."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedgen_pl.cli import main
from fedgen_pl.config import load_config
from fedgen_pl.label_related import LabelRelatedGAN, invariance_loss
from fedgen_pl.networks import DomainDCGANGenerator
from test_sources import write_npz_dataset


def test_invariance_loss_hand_computed():
    # 3 domains, batch of 2, 2 features: pairs (0,1): |(3,4)| = 5 for both samples; (0,2): 0; (1,2): 5
    h = torch.zeros(3, 2, 2)
    h[1] = torch.tensor([3.0, 4.0])
    assert float(invariance_loss(h)) == pytest.approx(10.0)


@torch.no_grad()
def test_invariance_loss_zero_iff_first_layer_ignores_the_domain():
    torch.manual_seed(0)
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4)
    z = torch.randn(5, 8)
    paired_z, codes = z.repeat(2, 1), torch.arange(2).repeat_interleave(5)
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) > 0.1
    generator.project.weight[:, 8:] = 0              # the columns that read the domain code
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) < 1e-5        # zero up to float32 rounding of the matmul
    # ... while the full generator still depends on the domain (later layers see the code)
    images = generator(paired_z, codes).view(2, 5, -1)
    assert float((images[0] - images[1]).abs().max()) > 0


@torch.no_grad()
def test_film_conditioning_can_draw_the_inverse_domain_with_every_weight_shared():
    torch.manual_seed(0)
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning="film")
    z = torch.randn(5, 8)
    paired_z, codes = z.repeat(2, 1), torch.arange(2).repeat_interleave(5)
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[0], images[1])             # gains start at 1, shifts at 0
    assert float(invariance_loss(generator(paired_z, codes, first_layer=True).view(2, 5, -1))) < 1e-5
    generator.shifts["0"][1] += 1.0                              # domain 1's first-layer shift moves G1
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) == pytest.approx(32 ** 0.5, rel=1e-5)  # 8 channels x 2x2, each off by 1
    generator.shifts["0"][1] -= 1.0
    generator.gains["2"][1] = -1.0                               # domain 1: the output's sign flipped
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[1], -images[0])            # the inverse image from the same z


@torch.no_grad()
def test_film_output_conditioning_shares_every_layer_but_the_output():
    torch.manual_seed(0)
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning="film_output")
    assert sorted(name for name, _ in generator.named_parameters() if "gains" in name or "shifts" in name) == \
        ["gains.2", "shifts.2"]
    z = torch.randn(5, 8)
    paired_z, codes = z.repeat(2, 1), torch.arange(2).repeat_interleave(5)
    generator.gains["2"][1] = -1.0
    generator.shifts["2"][1] = 0.5
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) < 1e-5                     # G1 never sees the code
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[1], torch.tanh(0.5 - torch.atanh(images[0])), atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("conditioning", ["film", "film_output"])
def test_zero_output_gain_starts_every_domain_at_the_shift_alone(conditioning):
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning=conditioning,
                                     output_gain_init=0.0)
    assert float(generator.gains["2"].abs().max()) == 0.0
    assert all(float((gain - 1).abs().max()) == 0.0 for name, gain in generator.gains.items() if name != "2")
    generator.shifts["2"][1] = 0.5
    images = generator(torch.randn(3, 8).repeat(2, 1), torch.arange(2).repeat_interleave(3)).view(2, 3, -1)
    torch.testing.assert_close(images[0], torch.zeros_like(images[0]))        # tanh(0 * h + 0)
    torch.testing.assert_close(images[1], torch.full_like(images[1], float(torch.tanh(torch.tensor(0.5)))))


def test_unknown_domain_conditioning_fails_loudly():
    with pytest.raises(ValueError, match="model.domain_conditioning"):
        DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, conditioning="bilinear")


def _lr_overrides(tmp_path):
    """A tiny two-domain scenario (4 digit-like classes and their inverses, 8x8) written to tmp_path."""
    root = tmp_path / "data"
    x_train, y_train, x_test, y_test = write_npz_dataset(root / "digits", classes=4)
    inverse = root / "inverse_digits"
    inverse.mkdir()
    np.savez(inverse / "train.npz", x=255 - x_train, y=y_train)
    np.savez(inverse / "test.npz", x=255 - x_test, y=y_test)
    return ["experiment=mnist_inverse_noniid", f"data.root={root}", "data.download=false", "data.image_size=8",
            "federation.communities=[{data: digits}, {data: inverse_digits}]", "federation.devices_per_community=2",
            "data.batch_size=4", "model.g_channels=4", "model.d_channels=4", "model.latent_dim=4",
            "model.regularizer_batch=8", "trainer.progress_bar=false", "metrics.num_samples=40",
            "metrics.kid_subset_size=20", "metrics.classifier_epochs=1", f"metrics.cache_dir={tmp_path / 'cache'}",
            "metrics.inception=false"]


def _lr_cfg(tmp_path, *overrides):
    return load_config([*_lr_overrides(tmp_path), *overrides])


def test_domain_classifier_loss_falls_on_separable_domains(tmp_path):
    cfg = _lr_cfg(tmp_path, "model.classifier_steps=40", "model.classifier_lr=0.01",
                  "model.domain_conditioning=concat", "model.film_output_gain_init=1")
    dm = FederatedDataModule(cfg)
    dm.setup()
    torch.manual_seed(0)
    model = LabelRelatedGAN(OmegaConf.to_container(cfg), dm.spec.to_dict())
    model.attach_data(dm)
    with torch.no_grad():     # make G's domains separable: domain 1 draws bright images, domain 0 dark
        model.global_generator.up2.weight[4:5] = 0
        model.global_generator.up2.bias.zero_()
        model.global_generator.up2.weight[5:6] = 5.0    # the input channel carrying domain 1's code
    losses = model.train_domain_classifier()
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("update,conditioning,gain_init", [
    ("sync", "film", 0), ("async", "film", 0),                  # the experiments' setting
    ("sync", "concat", 1), ("async", "concat", 1), ("sync", "film_output", 0)])
def test_smoke_label_related_trains_in_both_modes(tmp_path, update, conditioning, gain_init):
    run_dir = tmp_path / "run"
    overrides = [*_lr_overrides(tmp_path), "federation.global_rounds=2", "federation.local_iters=2",
                 "metrics.eval_every=1", f"federation.update={update}", "clock.delay=uniform", f"output_dir={run_dir}",
                 f"model.domain_conditioning={conditioning}", f"model.film_output_gain_init={gain_init}"]
    assert main(["train", *overrides]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert 0 <= summary["metrics"]["global/class_consistency"] <= 1
    assert "global/acc" not in summary["metrics"]          # no class conditioning in this scenario
    assert {"community_0/fid_classifier", "community_1/fid_classifier"} <= set(summary["metrics"])
    assert (run_dir / "plots" / "samples_global.png").is_file()
