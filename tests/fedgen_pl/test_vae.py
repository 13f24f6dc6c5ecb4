"""The federated VAE: it learns (ELBO and FID improve) and averages what it should."""

import json

import torch
from omegaconf import OmegaConf

from callbacks import GlobalAggregation
from datamodules import FederatedDataModule
from fedgen_pl.cli import main
from fedgen_pl.config import load_config
from fedgen_pl.evaluate import load_model
from fedgen_pl.metrics.classifier import load_or_train
from fedgen_pl.metrics.generation import GenerationEvaluator
from fedgen_pl.vae import FedVAE
from pytorch_lightning.plugins.precision import Precision


def _overrides(image_root, classifier_cache):
    return ["experiment=mnist_fmnist_noniid", "model.name=fed_vae", f"data.root={image_root}", "data.download=false",
            "data.image_size=8", "federation.communities=[{data: tiny}, {data: mine}]",
            "federation.devices_per_community=2", "data.batch_size=16", "model.g_channels=8", "model.latent_dim=4",
            "model.g_lr=0.003", "trainer.progress_bar=false", "metrics.num_samples=100", "metrics.kid_subset_size=50",
            "metrics.classifier_epochs=3", f"metrics.cache_dir={classifier_cache}", "metrics.inception=false"]


def test_fed_vae_improves_elbo_and_fid(tmp_path, image_root, classifier_cache):
    overrides = _overrides(image_root, classifier_cache)
    run_dir = tmp_path / "run"
    assert main(["train", *overrides, "federation.global_rounds=15", "federation.local_iters=10",
                 "metrics.eval_every=15", f"output_dir={run_dir}"]) == 0
    trained, _ = load_model(run_dir)
    cfg = load_config(overrides)
    dm = FederatedDataModule(cfg)
    dm.setup()
    torch.manual_seed(int(cfg.seed))           # the untrained model: the same initialisation
    untrained = FedVAE(OmegaConf.to_container(cfg), dm.spec.to_dict())
    x = torch.cat([t[0] for t in dm.community_test]).float() / 127.5 - 1
    y = torch.cat([t[1] for t in dm.community_test])
    before = untrained.global_negative_elbo(x, y, torch.Generator().manual_seed(0))
    after = trained.global_negative_elbo(x, y, torch.Generator().manual_seed(0))
    assert after < 0.8 * before, (before, after)

    classifier, _ = load_or_train(dm, classifier_cache, None, 3)
    evaluator = GenerationEvaluator(dm, classifier, None, 100, 50, conditional=True)
    fid_untrained = evaluator.evaluate_model(untrained)["global/fid_classifier"]
    fid_trained = evaluator.evaluate_model(trained)["global/fid_classifier"]
    assert fid_trained < fid_untrained, (fid_trained, fid_untrained)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bytes_device_edge"] > 0 and summary["rounds"] == 15


class _Trainer:
    should_stop = False


    precision_plugin = Precision()      # fp32: no autocast around the round
    loggers = []


def test_decoder_only_averaging_keeps_encoders_private(image_root, classifier_cache):
    cfg = load_config([*_overrides(image_root, classifier_cache), "model.vae_average=decoder",
                       "federation.local_iters=2"])
    dm = FederatedDataModule(cfg)
    dm.setup()
    model = FedVAE(OmegaConf.to_container(cfg), dm.spec.to_dict())
    model.attach_data(dm)
    opt = model.configure_optimizers()
    for _ in range(2):
        model.step_event(opt)
    encoders = {k: v.clone() for k, v in model.device_vaes.stacked_state().items() if not k.startswith("decoder.")}
    decoders = {k: v.clone() for k, v in model.device_vaes.stacked_state().items() if k.startswith("decoder.")}
    if model.round_complete:      # as training_step does
        model.finished_round = model.end_round()
    GlobalAggregation().on_train_batch_end(_Trainer(), model, None, None, 0)
    weights = torch.tensor(dm.spec.device_sample_counts, dtype=torch.float32)
    weights = weights / weights.sum()
    for name, before in encoders.items():        # untouched, still different per device
        assert torch.equal(model.device_vaes.stacked_state()[name], before), name
    for name, before in decoders.items():         # every device holds the count-weighted mean
        if torch.is_floating_point(before):
            expected = (before * weights.view(-1, *[1] * (before.dim() - 1))).sum(0)
            for n in range(4):
                torch.testing.assert_close(model.device_vaes.stacked_state()[name][n], expected)
