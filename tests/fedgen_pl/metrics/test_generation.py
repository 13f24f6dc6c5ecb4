"""Generation metrics on real data: they must rank what they are supposed to rank."""

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fedgen_pl.metrics.classifier import accuracy
from fedgen_pl.metrics.generation import ClassifierFeatures, GenerationEvaluator
from tests.conftest import needs_real_data


def _fid(classifier, a, b):
    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier))
    metric.update(a.float() / 127.5 - 1, real=True)
    metric.update(b.float() / 127.5 - 1, real=False)
    return float(metric.compute())


@needs_real_data
def test_fid_ranks_same_distribution_other_dataset_and_noise(mnist_fmnist_scenario):
    dm, classifier, _ = mnist_fmnist_scenario
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


@needs_real_data
def test_is_on_real_data_close_to_label_count_and_acc_equals_classifier_accuracy(mnist_fmnist_scenario):
    dm, classifier, record = mnist_fmnist_scenario
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
    # IS of real, balanced data against a hand computation over the same logits and random splits:
    # exp(E_x KL(p(y|x) || p(y))) within each of 10 splits of a random permutation, then the mean
    metric = evaluator.metrics["community_0"]["is_classifier"]
    seen = {}
    compute = metric.compute

    def watched():
        seen["logits"] = torch.cat(metric.features).clone()
        seen["rng"] = torch.get_rng_state()
        return compute()

    metric.compute = watched
    metrics = evaluator.evaluate(real_sampler("community_0"), scopes=["community_0"])
    torch.set_rng_state(seen["rng"])
    logits = seen["logits"][torch.randperm(len(seen["logits"]))].double()
    scores = []
    for chunk in logits.chunk(10):
        p = chunk.softmax(1)
        marginal = p.mean(0, keepdim=True)
        scores.append(float((p * (p.log() - marginal.log())).sum(1).mean().exp()))
    assert metrics["community_0/is_classifier"] == pytest.approx(sum(scores) / 10, rel=1e-5)
    assert sum(scores) / 10 > 0.8 * 10              # and it is close to the 10 digits community 0 holds
