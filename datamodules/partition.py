"""Partitions as pure functions of labels and a seeded ``torch.Generator`` (METHOD.md §5.7).

Two levels: ``community_shares`` gives each community its indices into its dataset (communities
that share a dataset get disjoint shares of every class they both hold), then a device partitioner
splits a community's indices among its devices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _even_split(indices: Tensor, parts: int) -> list[Tensor]:
    """Split into ``parts`` contiguous pieces whose sizes differ by at most one."""
    sizes = [len(indices) // parts + (1 if i < len(indices) % parts else 0) for i in range(parts)]
    return list(torch.split(indices, sizes))


def community_shares(datasets: list[str], classes: list[list[int]], labels: dict[str, Tensor],
                     generator: torch.Generator) -> list[Tensor]:
    """Indices (into each community's dataset) per community.

    ``datasets[i]`` names community i's dataset and ``classes[i]`` its classes; ``labels[name]`` are
    that dataset's training labels. Every (dataset, class) is shuffled once and split evenly among
    the communities holding it, so shares are disjoint.
    """
    pieces: list[list[Tensor]] = [[] for _ in datasets]
    for name in dict.fromkeys(datasets):
        holders_by_class: dict[int, list[int]] = {}
        for i, (dataset, wanted) in enumerate(zip(datasets, classes)):
            if dataset == name:
                for c in wanted:
                    holders_by_class.setdefault(int(c), []).append(i)
        for c, holders in sorted(holders_by_class.items()):
            members = torch.nonzero(labels[name] == c).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            for holder, share in zip(holders, _even_split(members, len(holders))):
                pieces[holder].append(share)
    return [torch.cat(p).sort().values for p in pieces]


def split_iid(indices: Tensor, num_devices: int, generator: torch.Generator) -> list[Tensor]:
    """Uniformly random, equal-sized (within one) device shares."""
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return [share.sort().values for share in _even_split(shuffled, num_devices)]
