import os
import tempfile

import pytest
import torch

from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.models import model_class

# Never reach for the network or a user's W&B account from tests.
_wandb_tmp = tempfile.mkdtemp(prefix="fedgen-wandb-")
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.setdefault(_var, _wandb_tmp)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

torch.set_num_threads(2)

SMALL_GRID = [
    "experiment=gaussian_grid",
    "federation.communities=[{data: gaussian_grid, classes: [0, 1]}, {data: gaussian_grid, classes: [2]},"
    " {data: gaussian_grid, classes: [4]}]",
    "federation.devices_per_community=2",
    "data.gaussian_samples_per_mode=200",
    "data.batch_size=16",
    "model.hidden_dim=16",
]


def small_cfg(*overrides):
    return load_config([*SMALL_GRID, *overrides])


def build_system(*overrides):
    """A small federation (3 communities) with its DataModule, outside any Trainer."""
    cfg = small_cfg(*overrides)
    torch.manual_seed(int(cfg.seed))
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    from omegaconf import OmegaConf

    system = model_class(cfg.model.name)(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())
    system.attach_data(datamodule)
    return system, datamodule


def clone_batch(batch):
    """A copy of a dispatch (the in-flight buffers are overwritten by the next dispatch)."""
    from dataclasses import fields

    return type(batch)(*(getattr(batch, f.name).clone() for f in fields(batch)))


@pytest.fixture
def tmp_run_dir(tmp_path):
    return tmp_path / "run"
