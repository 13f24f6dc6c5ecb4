"""Baselines: each trains in the shared engine; FedAvg against hand-computed numbers."""

import json

import pytest
import torch

from callbacks import GlobalAggregation
from fedgen_pl.cli import main
from tests.conftest import SMALL_GRID, assert_eval_reproduces, build_system, label_related_overrides
from pytorch_lightning.plugins.precision import Precision


class _Trainer:
    should_stop = False


    precision_plugin = Precision()      # fp32: no autocast around the round
    loggers = []


def _run_rounds(system, rounds):
    opt_g, opt_d = system.configure_optimizers()[:2]
    aggregation = GlobalAggregation()
    while system.round < rounds:
        system.step_event(opt_g, opt_d)
        if system.round_complete:      # as training_step does
            system.finished_round = system.end_round()
        aggregation.on_train_batch_end(_Trainer(), system, None, None, 0)
    return aggregation


@pytest.mark.parametrize("via_edges", [False, True])
def test_fed_gan_averages_generators_and_discriminators_by_counts(via_edges):
    system, dm = build_system("model.name=fed_gan", "federation.local_iters=2",
                              "federation.devices_per_community=[1, 3, 2]", f"federation.fedavg_via_edges={via_edges}")
    assert system.num_generators == 6 and system.device_discriminators.n == 6
    counts = torch.tensor(dm.spec.device_sample_counts, dtype=torch.float32)
    opt_g, opt_d = system.configure_optimizers()[:2]
    for _ in range(2):
        system.step_event(opt_g, opt_d)
    g_members = {k: v.clone() for k, v in system.community_generators.stacked_state().items()}
    d_members = {k: v.clone() for k, v in system.device_discriminators.stacked_state().items()}
    if system.round_complete:      # as training_step does
        system.finished_round = system.end_round()
    # through the edges the cloud weighs the 3 edge averages, else the 6 devices' generators
    assert len(system.finished_round["cloud_weights"]) == (3 if via_edges else 6)
    GlobalAggregation().on_train_batch_end(_Trainer(), system, None, None, 0)
    w = counts / counts.sum()
    for name, stacked in g_members.items():
        expected = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).sum(0)
        torch.testing.assert_close(dict(system.global_generator.state_dict())[name], expected)
        torch.testing.assert_close(system.community_generators.stacked_state()[name][4], expected)
    for name, stacked in d_members.items():
        expected = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).sum(0)
        torch.testing.assert_close(system.device_discriminators.stacked_state()[name][0], expected)


@pytest.mark.parametrize("name", ["centralized_gan", "md_gan", "fed_gan"])
def test_smoke_feature_related_baselines_train(name, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *SMALL_GRID, f"model.name={name}", "federation.global_rounds=2", "federation.local_iters=2",
                 "trainer.progress_bar=false", "metrics.eval_every=1", f"output_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert_eval_reproduces(run_dir, ["global/high_quality_share", "global/modes_covered"])


def test_centralized_gan_shares_one_discriminator_and_moves_no_bytes():
    system, _ = build_system("model.name=centralized_gan", "federation.local_iters=2")
    assert system.num_generators == 1 and system.device_discriminators.n == 1
    _run_rounds(system, 1)
    assert sum(system.bytes.values()) == 0
    md, _ = build_system("model.name=md_gan", "federation.local_iters=2")
    assert md.num_generators == 1 and md.device_discriminators.n == 6
    _run_rounds(md, 1)
    assert md.bytes["edge_to_device"] > 0 and md.bytes["edge_to_cloud"] == 0


@pytest.mark.parametrize("name", ["reg_cgan", "fed_cgan"])
def test_label_related_baselines_train(name, tmp_path, classifier_cache):
    run_dir = tmp_path / "run"
    assert main(["train", *label_related_overrides(tmp_path, classifier_cache), f"model.name={name}",
                 "federation.global_rounds=2",
                 "federation.local_iters=2", "metrics.eval_every=1", f"output_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and "global/class_consistency" in summary["metrics"]
