"""The label-related model: L_inv, the cloud's domain classifier, and training in both update modes."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedgen_pl.cli import main
from fedgen_pl.config import load_config
from fedgen_pl.gan import FederatedGAN
from fedgen_pl.label_related import invariance_loss, train_domain_classifier
from fedgen_pl.networks import DomainDCGANGenerator
from tests.conftest import assert_eval_reproduces, label_related_overrides


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


def _lr_cfg(tmp_path, classifier_cache, *overrides):
    return load_config([*label_related_overrides(tmp_path, classifier_cache), *overrides])


def test_domain_classifier_loss_falls_on_separable_domains(tmp_path, classifier_cache):
    cfg = _lr_cfg(tmp_path, classifier_cache, "model.classifier_steps=40", "model.classifier_lr=0.01",
                  "model.domain_conditioning=concat", "model.film_output_gain_init=1", "model.film_output_shift=true")
    dm = FederatedDataModule(cfg)
    dm.setup()
    torch.manual_seed(0)
    model = FederatedGAN(OmegaConf.to_container(cfg), dm.spec.to_dict())
    model.attach_data(dm)
    with torch.no_grad():     # make G's domains separable: domain 1 draws bright images, domain 0 dark
        model.global_generator.up2.weight[4:5] = 0
        model.global_generator.up2.bias.zero_()
        model.global_generator.up2.weight[5:6] = 5.0    # the input channel carrying domain 1's code
    losses = train_domain_classifier(model)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("update,conditioning,gain_init", [
    ("sync", "film", 0), ("async", "film", 0),                  # the experiments' setting
    ("sync", "concat", 1), ("async", "concat", 1), ("sync", "film_output", 0)])
def test_smoke_label_related_trains_in_both_modes(tmp_path, classifier_cache, update, conditioning, gain_init):
    run_dir = tmp_path / "run"
    overrides = [*label_related_overrides(tmp_path, classifier_cache), "federation.global_rounds=2",
                 "federation.local_iters=2",
                 "metrics.eval_every=1", f"federation.update={update}", "clock.delay=uniform", f"output_dir={run_dir}",
                 f"model.domain_conditioning={conditioning}", f"model.film_output_gain_init={gain_init}",
                 f"model.film_output_shift={conditioning == 'concat'}"]     # the experiments: no output shift
    assert main(["train", *overrides]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert_eval_reproduces(run_dir, ["global/class_consistency", "global/fid_classifier"])
    assert "global/acc" not in summary["metrics"]          # no class conditioning in this scenario
    assert {"community_0/fid_classifier", "community_1/fid_classifier"} <= set(summary["metrics"])
    assert (run_dir / "plots" / "samples_global.png").is_file()
