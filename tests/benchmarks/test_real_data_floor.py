"""benchmarks/real_data_floor.py: the stand-in generator answers each request with an unused real training
image of the requested label, from the requested domain's dataset."""

import importlib.util
from pathlib import Path

import pytest
import torch

from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.images import normalise_images
from tests.conftest import tiny_image_run

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("real_data_floor", ROOT / "benchmarks" / "real_data_floor.py")
real_data_floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real_data_floor)


def test_each_request_gets_an_unused_training_image_of_its_label_and_domain(tmp_path, image_root, classifier_cache):
    cfg = load_config(tiny_image_run(image_root, classifier_cache, tmp_path / "run"))
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    sample = real_data_floor.real_image_sampler(datamodule, seed=0)
    requests = []
    for domain, name in enumerate(datamodule.community_data):
        labels = datamodule.lookups[name][datamodule.sources[name].train_y].unique()
        requests += [(int(label), domain) for label in labels for _ in range(3)]
    labels, domains = (torch.tensor(column) for column in zip(*requests))
    images = torch.cat([sample(labels[i:i + 5], None, domains[i:i + 5]) for i in range(0, len(labels), 5)])

    assert images.shape[0] == len(requests) and images.min() >= -1 and images.max() <= 1
    seen = set()
    for image, (label, domain) in zip(images, requests):
        source = datamodule.sources[datamodule.community_data[domain]]
        matches = [i for i in range(len(source.train_x))
                   if torch.equal(normalise_images(source.train_x[i:i + 1])[0], image)]
        assert matches, "not a training image of the domain's dataset"
        assert any(int(datamodule.lookups[datamodule.community_data[domain]][source.train_y[i]]) == label
                   for i in matches)
        key = (domain, tuple(matches))
        assert key not in seen, "an image was drawn twice"
        seen.add(key)


def test_a_vector_experiment_is_refused_in_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as stop:
        real_data_floor.floor(["experiment=gaussian_grid"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "fedgen: not an image experiment (experiment gaussian_grid): name an image experiment, e.g. prism_mnist"]
