"""W&B sweeps: every swept key is a valid fedgen key, and the command line the W&B agent builds from a
sweep file runs `fedgen train` (here offline, for a few steps, on tiny stand-ins for the datasets)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from fedgen_pl.config import CONFIG_DIR, load_config
from tests.conftest import write_idx_dataset

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))


def sample(parameter: dict):
    """One value of a sweep parameter (the first listed, or the lower bound of a distribution)."""
    return parameter["values"][0] if "values" in parameter else parameter["min"]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line `wandb agent` runs for one parameter sample (wandb_agent.Agent._command_run)."""
    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    variables.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command = []
    for chunk in create_sweep_command(sweep["command"]):
        chunk = str(chunk)
        command += variables.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def test_there_are_sweeps_for_both_scenarios():
    assert {p.stem for p in SWEEPS} >= {"mnist_fmnist_noniid", "mnist_inverse_lambdas"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_swept_key_is_a_valid_fedgen_key(path):
    sweep = yaml.safe_load(path.read_text())
    fixed = [c for c in sweep["command"] if "=" in str(c)]
    assert "${args_no_hyphens}" in sweep["command"]
    for key, parameter in sweep["parameters"].items():
        for value in parameter.get("values", [parameter.get("min"), parameter.get("max")]):
            cfg = load_config([*fixed, f"{key}={value}"])
            assert OmegaConf.select(cfg, key) == value, key


def test_agent_command_line_runs_fedgen_train(tmp_path, classifier_cache):
    sweep = yaml.safe_load((CONFIG_DIR / "sweeps" / "mnist_fmnist_noniid.yaml").read_text())
    values = {key: sample(parameter) for key, parameter in sweep["parameters"].items()}
    command = agent_command(sweep, values)
    assert command[:6] == ["/usr/bin/env", "fedgen", "train", "experiment=mnist_fmnist_noniid", "logger.wandb=true",
                           "logger.wandb_mode=online"]
    assert command[6:] == [f"{k}={v}" for k, v in values.items()]

    # Tiny stand-ins for MNIST and FashionMNIST in the torchvision layout; offline (no W&B server here).
    for folder in ("MNIST", "FashionMNIST"):
        write_idx_dataset(tmp_path / "data" / folder / "raw", n_train=80, classes=10)
    run_dir = tmp_path / "run"
    fast = [f"data.root={tmp_path / 'data'}", "data.download=false", "data.image_size=8", "data.batch_size=4",
            "federation.global_rounds=2", "federation.local_iters=1", "model.g_channels=4", "model.d_channels=4",
            "model.latent_dim=4", "metrics.num_samples=40", "metrics.kid_subset_size=20", "metrics.classifier_epochs=1",
            f"metrics.cache_dir={classifier_cache}", "metrics.inception=false", "trainer.progress_bar=false",
            "logger.wandb_mode=offline", f"output_dir={run_dir}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               WANDB_RUN_ID="sweeptrial1", WANDB_DIR=str(tmp_path / "wandb"), WANDB_MODE="offline")
    done = subprocess.run([*command, *fast], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert (run_dir / "wandb_run_id.txt").read_text().strip() == "sweeptrial1"     # the agent's run id
