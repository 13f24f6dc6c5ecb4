"""Partitions: disjoint, complete, exactly the promised label skew, reproducible, loud on bad input."""

import numpy as np
import pytest

from datamodules.partition import (
    PartitionError,
    community_shares,
    quantity_weights,
    shard_classes,
    split_dirichlet,
    split_iid,
    split_shards,
)


def _labels(n_per_class=50, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(classes), n_per_class))


def _assert_disjoint_complete(parts, indices):
    merged = np.concatenate(parts)
    assert len(merged) == len(np.unique(merged)), "parts overlap"
    assert set(merged.tolist()) == set(np.asarray(indices).tolist()), "parts do not cover the indices"


def test_community_shares_disjoint_and_complete():
    labels = {"mnist": _labels(), "fmnist": _labels(seed=1)}
    # inverse_mnist has base mnist: it must not see the MNIST community's images
    bases = ["mnist", "fmnist", "fmnist", "mnist"]
    classes = [list(range(10)), list(range(10)), [0, 1, 2], list(range(10))]
    shares = community_shares(bases, classes, labels, np.random.default_rng(0))
    _assert_disjoint_complete([shares[1], shares[2]], np.arange(500))
    _assert_disjoint_complete([shares[0], shares[3]], np.arange(500))
    # the two communities holding fmnist classes 0-2 split each of them evenly
    for c in range(3):
        assert abs((labels["fmnist"][shares[1]] == c).sum() - (labels["fmnist"][shares[2]] == c).sum()) <= 1
    assert set(labels["fmnist"][shares[2]].tolist()) == {0, 1, 2}


def test_iid_split():
    parts = split_iid(np.arange(103), 5, np.random.default_rng(0))
    _assert_disjoint_complete(parts, np.arange(103))
    assert sorted(len(p) for p in parts) == [20, 20, 21, 21, 21]


def test_shards_give_each_device_exactly_its_classes():
    labels = _labels()
    indices = np.arange(len(labels))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    held = shard_classes(np.arange(10), 5, 2, rng_a)
    parts = split_shards(indices, labels, 5, 2, rng_b)
    _assert_disjoint_complete(parts, indices)
    for classes, part in zip(held, parts):
        assert len(set(classes.tolist())) == 2
        assert set(labels[part].tolist()) == set(classes.tolist())
    # 3 classes per device over 10 classes and 5 devices: still exactly 3 each, every class used
    parts = split_shards(indices, labels, 5, 3, np.random.default_rng(1))
    assert all(len(set(labels[p].tolist())) == 3 for p in parts)
    _assert_disjoint_complete(parts, indices)


def test_shards_errors():
    labels = _labels(classes=2)
    with pytest.raises(PartitionError, match=r"classes_per_device=3 is larger than the 2 classes present"):
        split_shards(np.arange(len(labels)), labels, 2, 3, np.random.default_rng(0), where="community 0")
    labels = _labels(classes=10)
    with pytest.raises(PartitionError, match=r"2 devices x classes_per_device=2 cannot hold all 10 classes"):
        split_shards(np.arange(len(labels)), labels, 2, 2, np.random.default_rng(0))


def _skew(parts, labels, classes=10):
    """Mean total-variation distance between each device's label distribution and the uniform one."""
    dists = [np.bincount(labels[p], minlength=classes) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(d - 1 / classes).sum() for d in dists]))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = _labels(n_per_class=200)
    indices = np.arange(len(labels))
    skews = []
    for alpha in (100.0, 1.0, 0.05):
        values = []
        for seed in range(3):
            parts = split_dirichlet(indices, labels, 5, alpha, 10, np.random.default_rng(seed))
            _assert_disjoint_complete(parts, indices)
            assert min(len(p) for p in parts) >= 10
            values.append(_skew(parts, labels))
        skews.append(np.mean(values))
    assert skews[0] < 0.1 < skews[1] < skews[2], skews


def test_dirichlet_errors():
    labels = _labels()
    with pytest.raises(PartitionError, match=r"dirichlet_alpha must be > 0, got 0"):
        split_dirichlet(np.arange(500), labels, 5, 0.0, 10, np.random.default_rng(0))
    with pytest.raises(PartitionError, match=r"cannot give 5 devices at least 200 each"):
        split_dirichlet(np.arange(500), labels, 5, 1.0, 200, np.random.default_rng(0))


def test_more_devices_than_samples():
    with pytest.raises(PartitionError, match=r"7 devices but only 5 samples"):
        split_iid(np.arange(5), 7, np.random.default_rng(0))


def test_same_seed_same_partition_and_quantity_skew():
    labels = _labels()
    indices = np.arange(len(labels))

    def make(seed, classes_per_device=4):
        rng = np.random.default_rng(seed)
        return split_shards(indices, labels, 5, classes_per_device, rng, quantity_weights(5, 1.0, rng))

    a, b, c = make(3), make(3), make(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))
    _assert_disjoint_complete(a, indices)
    # quantity skew makes sizes unequal where several devices share a class (4 classes per device)
    # and in iid splits; with 2 classes per device here every class has one holder, so sizes are fixed.
    sizes = np.array([len(p) for p in a])
    assert sizes.std() / sizes.mean() > 0.2
    rng = np.random.default_rng(0)
    skewed = np.array([len(p) for p in split_iid(indices, 5, rng, quantity_weights(5, 1.0, rng))])
    assert skewed.std() / skewed.mean() > 0.2
    assert np.ptp([len(p) for p in split_iid(indices, 5, np.random.default_rng(0))]) <= 1


def test_sorted_shards_deals_label_sorted_shards_like_a_plain_loop():
    """McMahan et al.'s split (PRISM's non-i.i.d.): sort by label, cut num_devices x shards_per_device equal
    shards, deal them at random; checked against the shards cut by hand."""
    from datamodules.partition import split_sorted_shards

    labels = np.repeat(np.arange(5), [13, 7, 10, 12, 8])        # 50 samples, unequal classes
    indices = np.random.default_rng(1).permutation(50)[:47]     # a community's share, unsorted, 47 of them
    parts = split_sorted_shards(indices, labels, 3, 2, np.random.default_rng(0))
    size = 47 // 6                                               # 7; the last 5 sorted samples are left out
    ordered = indices[np.argsort(labels[indices], kind="stable")]
    shards = [set(ordered[s * size:(s + 1) * size].tolist()) for s in range(6)]
    dealt = []
    for part in parts:
        assert len(part) == 2 * size and list(part) == sorted(part)
        mine = [s for s, shard in enumerate(shards) if shard <= set(part.tolist())]
        assert len(mine) == 2                                    # exactly two whole shards
        dealt += mine
    assert sorted(dealt) == list(range(6))                       # every shard dealt once


def test_sorted_shards_refuses_more_shards_than_samples():
    from datamodules.partition import PartitionError, split_sorted_shards

    with pytest.raises(PartitionError, match="data.shards_per_device"):
        split_sorted_shards(np.arange(5), np.zeros(5, dtype=int), 3, 2, np.random.default_rng(0))
