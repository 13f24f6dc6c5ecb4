"""The labels of generated samples (`federation.fake_labels`): their distribution per device, against
the protocol's definition, with fixed seeds."""


import torch

from tests.conftest import build_system

# Two communities; every device holds exactly one label, so a device's histogram and its community's
# label set differ.
SKEWED = ["data.partition=shards", "data.classes_per_device=1",
          "federation.communities=[{data: gaussian_grid, classes: [0, 1, 2]}, {data: gaussian_grid, classes: [3, 4]}]",
          "federation.devices_per_community=3"]


def _draw(system, scope, n=6000):
    generator = torch.Generator().manual_seed(0)
    return system.data.sample_fake_labels(n, generator, scope)


def test_community_labels_are_uniform_over_the_community_whatever_the_device_holds():
    system, data = build_system(*SKEWED, "federation.fake_labels=community")
    community_labels = [[0, 1, 2], [3, 4]]
    labels = _draw(system, system.fake_label_scope)
    for n in range(system.num_devices):
        k = system.spec.community_of_device[n]
        held = torch.nonzero(data.label_histogram[n]).flatten().tolist()
        assert len(held) == 1                                     # the device holds one label ...
        counts = torch.bincount(labels[n], minlength=5).float()
        assert counts[[c for c in range(5) if c not in community_labels[k]]].sum() == 0
        share = counts[community_labels[k]] / counts.sum()       # ... its fakes cover the community's, evenly
        expected = 1 / len(community_labels[k])
        # 6000 draws: the standard error of a share is below 0.0065; 4 standard errors
        assert torch.all((share - expected).abs() < 0.026), (n, share)


def test_device_labels_follow_the_device_histogram():
    system, data = build_system(*SKEWED)
    assert system.fake_label_scope == "device"
    labels = _draw(system, "device")
    for n in range(system.num_devices):
        assert set(labels[n].tolist()) == set(torch.nonzero(data.label_histogram[n]).flatten().tolist())


def test_centralized_community_labels_are_pooled():
    system, _ = build_system(*SKEWED, "model.name=centralized_gan", "federation.fake_labels=community")
    assert system.fake_label_scope == "pooled"
    labels = _draw(system, "pooled")
    for n in range(system.num_devices):
        assert set(labels[n].tolist()) == {0, 1, 2, 3, 4}
