"""Configuration: layering, documentation of every key, and loud failures naming the key."""

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from fedgen_pl.cli import main
from fedgen_pl.config import (CONFIG_DIR, KEYS, Config, ConfigError, cloud_lr, defaults_yaml,
                              devices_per_community, load_config)
from tests.conftest import SMALL_GRID


def _schema_keys(node, prefix=""):
    for key in node:
        value = node._get_node(key)
        full = prefix + key
        if OmegaConf.is_dict(value) and full != "schedules":
            yield from _schema_keys(value, full + ".")
        else:
            yield full


def test_default_yaml_is_generated_from_the_key_table():
    """configs/default.yaml is `fedgen config --defaults`: every key, its default and its doc, from KEYS."""
    assert (CONFIG_DIR / "default.yaml").read_text() == defaults_yaml()


def test_every_schema_key_has_one_entry_with_a_doc():
    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    assert set(_schema_keys(OmegaConf.structured(Config))) == set(names)
    assert all(key.doc for key in KEYS)


@pytest.mark.parametrize("key", [key for key in KEYS if key.choices or key.ge is not None or key.gt is not None],
                         ids=lambda key: key.name)
def test_the_key_table_checks_every_declared_choice_and_bound(key):
    """The default is allowed; a value outside the choices or just past the bound is refused naming the key."""
    assert key.problem(key.default) is None
    if key.choices:
        bad = "not-a-choice" if key.type is not int else max(c for c in key.choices if isinstance(c, int)) + 1
    else:
        bad = key.ge - 1 if key.ge is not None else key.gt
        bad = int(bad) if key.type is int else float(bad)
    overrides = [f"{key.name}={bad}"] + (["experiment=gaussian_grid"] if key.name != "experiment" else [])
    with pytest.raises(ConfigError, match=rf"\({re.escape(key.name)}\)"):
        load_config(overrides)


def test_layers_and_overrides():
    assert load_config([]).experiment == "mnist_fmnist_noniid"
    cfg = load_config(["experiment=gaussian_grid", "seed=3", "federation.local_iters=20"])
    assert cfg.experiment == "gaussian_grid" and cfg.seed == 3 and cfg.federation.local_iters == 20
    assert len(cfg.federation.communities) == 9 and cloud_lr(cfg) == 9.0
    assert devices_per_community(cfg) == [5] * 9
    assert load_config(["federation.cloud_lr=1"]).federation.cloud_lr == 1
    assert load_config(["experiment=mnist_fmnist_noniid"]).data.partition == "shards"


def test_schedule_block_applies_and_command_line_wins():
    assert load_config(["experiment=gaussian_grid", "schedule=full"]).federation.global_rounds == 600
    assert load_config(["experiment=gaussian_grid", "schedule=full",
                        "federation.global_rounds=7"]).federation.global_rounds == 7


@pytest.mark.parametrize("overrides, message", [
    (["federation.local_iter=3"], r"\(federation.local_iter\): .*Did you mean.*local_iters"),
    (["bogus=1"], r"\(bogus\): Key 'bogus' not in"),
    (["federation.local_iters=abc"], r"federation.local_iters"),
    (["federation.local_iters=0"], r"\(federation.local_iters\): must be >= 1"),
    (["federation.update=sometimes"], r"\(federation.update\): 'sometimes' is not allowed; choose one of sync, async"),
    (["federation.cloud_lr=-1"], r"\(federation.cloud_lr\): must be 'auto' or a number > 0"),
    (["federation.cloud_lr=fast"], r"\(federation.cloud_lr\): must be 'auto' or a number > 0, got 'fast'"),
    (["federation.devices_per_community=[1, 2]"], r"devices_per_community\): has 2 entries but .* has 3"),
    (["federation.devices_per_community=0"], r"devices_per_community\): must be an int >= 1"),
    (["federation.communities=[{data: cifar}]"], r"communities\[0\].data\): unknown dataset 'cifar'"),
    (["federation.aggregation=median"], r"\(federation.aggregation\): unknown rule 'median'"),
    (["model.gan_loss=wasserstein"], r"\(model.gan_loss\): 'wasserstein' is not allowed"),
    (["model.beta1=1.5"], r"\(model.beta1\): must be in \[0, 1\)"),
    (["experiment=nonexistent"], r"\(experiment\): unknown experiment 'nonexistent'; available: .*gaussian_grid"),
    (["schedule=slow"], r"\(schedule\): 'slow' is not allowed"),
    (["seed"], r"\(override 'seed'\): not of the form key=value"),
    (["data.batch_size=0"], r"\(data.batch_size\): must be >= 1"),
    (["data.dirichlet_alpha=0"], r"\(data.dirichlet_alpha\): must be > 0, got 0"),
    (["data.dirichlet_alpha=-0.5"], r"\(data.dirichlet_alpha\): must be > 0, got -0.5"),
    (["trainer.nonfinite=ignore"], r"\(trainer.nonfinite\): 'ignore' is not allowed; choose one of skip, stop"),
    (["model.film_output_gain_init=0"], r"\(model.film_output_gain_init\): only applies to domain_conditioning=film"),
    (["deploy.stream_certificates=/nonexistent"], r"\(deploy.stream_certificates\): '/nonexistent' lacks ca.crt"),
])
def test_bad_input_names_the_key(overrides, message):
    from fedgen_pl.train import resolve_names

    with pytest.raises(ConfigError, match=message):
        resolve_names(load_config(overrides))      # values when loaded, registered names when resolved


def test_cli_reports_config_errors_before_training(capsys, tmp_path):
    assert main(["train", "federation.local_iters=0", f"output_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert err == "fedgen: configuration error (federation.local_iters): must be >= 1, got 0\n"
    assert not (tmp_path / "x").exists()


def test_experiment_can_be_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("federation:\n  communities: [{data: gaussian_grid, classes: [3]}]\n  local_iters: 2\n")
    cfg = load_config([f"experiment={path}"])
    assert cfg.federation.local_iters == 2 and len(cfg.federation.communities) == 1


def test_an_experiment_extends_another(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: gaussian_grid\nfederation:\n  local_iters: 2\n")
    cfg = load_config([f"experiment={child}"])
    base = load_config(["experiment=gaussian_grid"])
    assert cfg.federation.local_iters == 2 and cfg.federation.communities == base.federation.communities
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config([f"experiment={loop}"])


def test_shipped_experiments_resolve_as_before_extends():
    """The async and non-i.i.d. experiments are their base plus the keys they name."""
    noniid, iid = load_config(["experiment=mnist_fmnist_noniid"]), load_config(["experiment=mnist_fmnist_iid"])
    assert noniid.data.partition == "shards" and iid.data.partition == "iid"
    assert noniid.federation == iid.federation and noniid.model == iid.model
    grid_async = load_config(["experiment=gaussian_grid_async"])
    assert grid_async.federation["update"] == "async" and grid_async.clock.delay == "tiers"
    assert len(grid_async.federation.communities) == 9


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
