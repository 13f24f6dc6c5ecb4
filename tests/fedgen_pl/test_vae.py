"""The federated VAE: it learns (ELBO and FID improve) and averages what it should."""

import json
import math

import pytest
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


def _one_round_trained(image_root, classifier_cache, *extra):
    """A FedVAE whose devices have taken one round's 2 local steps, the cloud's round not yet run."""
    cfg = load_config([*_overrides(image_root, classifier_cache), "federation.local_iters=2", *extra])
    dm = FederatedDataModule(cfg)
    dm.setup()
    model = FedVAE(OmegaConf.to_container(cfg), dm.spec.to_dict())
    model.attach_data(dm)
    opt = model.configure_optimizers()
    for _ in range(2):
        model.step_event(opt)
    return model, dm


def test_decoder_only_averaging_keeps_encoders_private(image_root, classifier_cache):
    model, dm = _one_round_trained(image_root, classifier_cache, "model.vae_average=decoder")
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


# -- the likelihood maths against hand computations ------------------------------------------------------

def _hand_built_vae(mean, log_var, pixel_logit):
    """A 4x4 VAE whose posterior is the constant N(mean, exp(log_var)) and whose decoder emits the constant
    logit ``pixel_logit``: every weight 0, the answers in the biases (no normalisation)."""
    from fedgen_pl.vae import VAE

    vae = VAE((1, 4, 4), latent_dim=2, num_labels=0, channels=2, norm="none")
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.posterior.bias.copy_(torch.tensor([*mean, *log_var]))
        vae.decoder.body[-2].bias.fill_(pixel_logit)        # the last transposed convolution
    return vae


def test_negative_elbo_of_a_hand_built_vae_equals_the_hand_computation():
    import math

    mean, log_var, logit = (0.5, -1.0), (0.2, -0.4), 0.3
    vae = _hand_built_vae(mean, log_var, logit)
    grey = torch.tensor([[0.0, 0.25, 1.0, 0.5] * 4, [1.0, 0.0, 0.75, 0.5] * 4]).view(2, 1, 4, 4)
    x = grey * 2 - 1
    reconstruction, kl = vae(x, torch.zeros(2, dtype=torch.long), torch.randn(2, 2))
    s = 1 / (1 + math.exp(-logit))
    for i in range(2):
        by_hand = -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for t in grey[i].flatten().tolist())
        assert reconstruction[i].item() == pytest.approx(by_hand, rel=1e-6)
    kl_by_hand = 0.5 * sum(m * m + math.exp(v) - 1 - v for m, v in zip(mean, log_var))
    assert kl.tolist() == pytest.approx([kl_by_hand] * 2, rel=1e-6)


def test_importance_weighted_bound_equals_the_hand_computation():
    import math

    mean, log_var, logit = (0.5, -1.0), (0.2, -0.4), -0.7
    vae = _hand_built_vae(mean, log_var, logit)
    grey = torch.full((1, 1, 4, 4), 0.25)
    eps = torch.tensor([[[0.3, -1.2]], [[-0.5, 0.8]], [[1.5, 0.1]]])        # K = 3 samples of one image
    from fedgen_pl.metrics.likelihood import iw_negative_elbo

    bound = iw_negative_elbo(vae.log_weights(grey * 2 - 1, torch.zeros(1, dtype=torch.long), eps))
    s = 1 / (1 + math.exp(-logit))
    log_px_z = 16 * (0.25 * math.log(s) + 0.75 * math.log(1 - s))
    log_w = []
    for k in range(3):
        z = [m + math.exp(v / 2) * e for m, v, e in zip(mean, log_var, eps[k, 0].tolist())]
        log_prior = sum(-0.5 * (zi ** 2 + math.log(2 * math.pi)) for zi in z)
        log_q = sum(-0.5 * ((zi - m) ** 2 / math.exp(v) + v + math.log(2 * math.pi)) for zi, m, v in zip(z, mean, log_var))
        log_w.append(log_px_z + log_prior - log_q)
    by_hand = -math.log(sum(math.exp(w) for w in log_w) / 3)
    assert bound.item() == pytest.approx(by_hand, rel=1e-6)


def test_the_bound_of_a_mixture_equals_the_hand_computation():
    import math

    from fedgen_pl.metrics.likelihood import mixture_bound

    bounds = torch.tensor([[1.0, 10.0], [3.0, 2.0]])           # two members, two images
    got = mixture_bound(bounds, torch.tensor([1.0, 3.0]))
    expected = [-math.log(0.25 * math.exp(-1) + 0.75 * math.exp(-3)), -math.log(0.25 * math.exp(-10) + 0.75 * math.exp(-2))]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_auroc_equals_a_hand_count_of_ordered_pairs():
    from fedgen_pl.metrics.anomaly import auroc

    normal, anomalous = [101.0, 140.0, 135.0, 180.0], [190.0, 135.0, 170.0]      # negative ELBOs, in nats
    # pairs (anomaly, normal) with the anomaly scored higher, ties counting one half
    pairs = sum(1.0 if a > n else 0.5 if a == n else 0.0 for a in anomalous for n in normal)
    scores = torch.tensor(normal + anomalous)
    is_anomaly = torch.tensor([0] * 4 + [1] * 3)
    assert auroc(scores, is_anomaly) == pytest.approx(pairs / 12)


# -- the scenarios: local-only, centralized, through the edges; the metrics they log -------------------------

def _tiny_run(tmp_path, image_root, classifier_cache, name, *extra):
    run_dir = tmp_path / name
    assert main(["train", *_overrides(image_root, classifier_cache), "federation.global_rounds=2",
                 "federation.local_iters=2", "metrics.eval_every=2", "metrics.iw_samples=4", *extra,
                 f"output_dir={run_dir}"]) == 0
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_local_only_vaes_share_nothing_and_are_scored_as_their_mixture(tmp_path, image_root, classifier_cache):
    run_dir, summary = _tiny_run(tmp_path, image_root, classifier_cache, "local", "model.vae_average=none")
    assert summary["bytes_device_edge"] == 0 and summary["bytes_edge_cloud"] == 0
    model, _ = load_model(run_dir)
    state = model.device_vaes.stacked_state()
    assert all(not torch.equal(v[0], v[1]) for k, v in state.items() if torch.is_floating_point(v) and v[0].numel() > 1)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    noise = torch.Generator().manual_seed(1)
    members = torch.stack([model.per_sample_bounds(v, x, y, noise) for v in model.member_vaes()])
    weights = model.mixture_weights()
    mixture = model.model_bounds(x, y, torch.Generator().manual_seed(1))    # the same noise, member by member
    by_hand = torch.tensor([-math.log(sum(w * math.exp(-b) for w, b in zip(weights.tolist(), members[:, i].tolist())))
                            for i in range(6)])
    torch.testing.assert_close(mixture, by_hand, rtol=1e-5, atol=1e-4)
    for key in ("global/negative_elbo", "global/iw_negative_elbo", "devices/negative_elbo", "community_0/negative_elbo"):
        assert key in summary["metrics"], key


def test_centralized_vae_is_one_vae_on_the_pooled_data(tmp_path, image_root, classifier_cache):
    run_dir, summary = _tiny_run(tmp_path, image_root, classifier_cache, "central", "model.name=centralized_vae")
    model, _ = load_model(run_dir)
    assert model.device_vaes.n == 1 and summary["bytes_device_edge"] == 0
    state = model.device_vaes.stacked_state()
    for name, value in model.global_vae.state_dict().items():
        torch.testing.assert_close(state[name][0], value)        # G <- G_1
    assert summary["metrics"]["devices/negative_elbo"] == pytest.approx(summary["metrics"]["global/negative_elbo"],
                                                                       rel=0.05)
    assert main(["train", *_overrides(image_root, classifier_cache), "model.name=centralized_vae",
                 "model.vae_average=decoder", f"output_dir={tmp_path / 'refused'}"]) == 2
    assert not (tmp_path / "refused").exists()


def test_fedavg_through_the_edges_sends_the_cloud_only_the_edge_averages(image_root, classifier_cache, monkeypatch):
    import fedgen_pl.vae
    from fedgen_pl.aggregation import fedavg

    seen = []

    def cloud_rule(global_state, member_state, stats):      # FedAvg, recording what reaches the cloud
        seen.append(({k: v.clone() for k, v in member_state.items()}, stats))
        return fedavg(global_state, member_state, stats)

    monkeypatch.setattr(fedgen_pl.vae, "get_aggregation", lambda name: cloud_rule)
    model, dm = _one_round_trained(image_root, classifier_cache, "federation.fedavg_via_edges=true",
                                   "data.quantity_skew=1.0", "data.partition=dirichlet")
    devices = {k: v.clone() for k, v in model.device_vaes.stacked_state().items()}
    assert model.round_complete
    model.end_round()
    (edges, stats), = seen
    counts = torch.tensor(dm.spec.device_sample_counts, dtype=torch.float64)
    assert len(set(counts.tolist())) > 1                 # unequal devices: the weights matter
    community = torch.tensor(dm.spec.community_of_device)
    assert stats.sample_counts.tolist() == [counts[community == k].sum().item() for k in range(2)]
    for name, value in devices.items():                  # edge k = sum_{j in k} (n_j / n_k) theta_j, by hand
        if not torch.is_floating_point(value):
            continue
        assert edges[name].shape == (2, *value.shape[1:]), name
        for k in range(2):
            mine = community == k
            by_hand = (value[mine].double() * (counts[mine] / counts[mine].sum()).view(-1, *[1] * (value.dim() - 1))).sum(0)
            torch.testing.assert_close(edges[name][k].double(), by_hand, rtol=1e-5, atol=1e-6, msg=name)
        flat = (value.double() * (counts / counts.sum()).view(-1, *[1] * (value.dim() - 1))).sum(0)
        torch.testing.assert_close(model.global_vae.state_dict()[name].double(), flat, rtol=1e-5, atol=1e-6, msg=name)


def test_fedavg_through_the_edges_equals_flat_fedavg_up_to_rounding(tmp_path, image_root, classifier_cache, capsys):
    flat, flat_summary = _tiny_run(tmp_path, image_root, classifier_cache, "flat", "federation.fedavg_via_edges=false")
    # the cloud's keys of the three-tier models do not apply, and the run says so
    assert "[fedgen] fed_vae: this model's own rules replace federation.tau_edge, federation.tau_cloud, " \
           "federation.cloud_lr, federation.aggregation" in capsys.readouterr().err
    edges, edges_summary = _tiny_run(tmp_path, image_root, classifier_cache, "edges", "federation.fedavg_via_edges=true")
    for key, value in flat_summary["metrics"].items():      # the same models: every metric to 5 digits
        assert edges_summary["metrics"][key] == pytest.approx(value, rel=1e-5), key
    a, b = load_model(flat)[0].global_vae.state_dict(), load_model(edges)[0].global_vae.state_dict()
    for name in a:
        if name == "decoder.body.2.bias":   # a bias before a GroupNorm has no gradient: Adam amplifies the rounding
            continue
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # fewer bytes between edges and cloud (K averages instead of N models)
    assert edges_summary["bytes_edge_cloud"] < flat_summary["bytes_edge_cloud"]
    assert edges_summary["bytes_device_edge"] == flat_summary["bytes_device_edge"]


def test_anomaly_auroc_per_device_for_a_held_out_class(tmp_path, image_root, classifier_cache, capsys):
    held_out = ["federation.communities=[{data: tiny, classes: [0, 1]}, {data: mine}]", "metrics.anomaly_data=tiny",
                "metrics.anomaly_classes=[2]"]
    _, summary = _tiny_run(tmp_path, image_root, classifier_cache, "anomaly", *held_out)
    per_device = [summary["metrics"][f"device_{n}/anomaly_auroc"] for n in range(4)]
    assert all(0 <= v <= 1 for v in per_device)
    assert summary["metrics"]["devices/anomaly_auroc"] == pytest.approx(sum(per_device) / 4)

    # anomalies from a dataset no community trains on
    other = ["federation.communities=[{data: tiny}, {data: tiny}]", "metrics.anomaly_data=mine",
             "metrics.anomaly_classes=[0, 1, 2, 3]"]
    _, summary = _tiny_run(tmp_path, image_root, classifier_cache, "anomaly_other", *other)
    assert 0 <= summary["metrics"]["devices/anomaly_auroc"] <= 1 and "device_3/anomaly_auroc" in summary["metrics"]

    capsys.readouterr()
    trained_on = ["federation.communities=[{data: tiny}, {data: mine}]", "metrics.anomaly_data=tiny",
                  "metrics.anomaly_classes=[2]"]
    assert main(["train", *_overrides(image_root, classifier_cache), *trained_on, f"output_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedgen: configuration error (metrics.anomaly_classes): community 0 trains on class(es) [2]")
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
    assert main(["train", *_overrides(image_root, classifier_cache), "model.name=fed_gan", *held_out,
                 f"output_dir={tmp_path / 'gan'}"]) == 2
