"""The plug-in points: a user registers an aggregation rule and a dataset, then trains with them."""

import json

import torch

from conftest import SMALL_GRID
from fedgen_pl.cli import main

PLUGIN = '''
import torch
from datamodules import SourceData, register_dataset
from fedgen_pl.aggregation import register_aggregation, weighted_step

CALLS = []


@register_aggregation("uniform_test_rule")
def uniform(global_state, community_state, stats):
    CALLS.append(len(stats.community_loss))
    weights = torch.full_like(stats.community_loss, 1 / len(stats.community_loss))
    return weighted_step(global_state, community_state, weights, stats.cloud_lr), weights


@register_dataset("two_blobs_test")
def two_blobs(cfg):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(200)
    x = torch.stack([y * 4.0 - 2.0, torch.zeros(400)], 1) + 0.2 * torch.randn(400, 2, generator=g)
    return SourceData(x, y, x[:50], y[:50], ["left", "right"])
'''


def test_user_rule_and_dataset_from_a_plugin_file(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    run_dir = tmp_path / "run"
    overrides = [*SMALL_GRID, f"plugins=[{plugin}]", "federation.aggregation=uniform_test_rule",
                 "federation.communities=[{data: two_blobs_test, classes: [0]}, {data: two_blobs_test, classes: [1]}]",
                 "federation.global_rounds=2", "federation.local_iters=1", "trainer.progress_bar=false",
                 "metrics.eval_every=1", f"output_dir={run_dir}"]
    assert main(["train", *overrides]) == 0
    import sys

    assert sys.modules["fedgen_plugin_my_plugin"].CALLS == [2, 2]       # used in both rounds, 2 communities
    summary = json.loads((run_dir / "summary.json").read_text())
    torch.testing.assert_close(torch.tensor(summary["cloud_weights_last_round"]), torch.tensor([0.5, 0.5]))


def test_broken_plugin_is_reported(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    assert main(["train", *SMALL_GRID, f"plugins=[{plugin}]"]) == 2
    assert f"(plugins[0]): importing '{plugin}' failed: RuntimeError: boom" in capsys.readouterr().err
