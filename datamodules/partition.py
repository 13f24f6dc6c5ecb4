"""Partitions as pure functions of labels and a seeded ``numpy.random.Generator`` (docs/method.md §10).

Two levels: ``community_shares`` gives each community its indices into its dataset (communities
whose datasets share images get disjoint shares of every class they both hold), then a device
partitioner splits a community's indices among its devices:

- ``split_iid``: uniformly at random;
- ``split_shards``: label skew after McMahan et al., each device holds exactly ``classes_per_device``
  classes (assigned round-robin over a shuffled class order, so classes are spread evenly);
- ``split_sorted_shards``: McMahan et al.'s original split, as PRISM (ICLR 2025) uses it: the indices
  sorted by label are cut into ``num_devices x shards_per_device`` equal shards and each device draws
  ``shards_per_device`` of them at random (a shard may straddle two classes);
- ``split_dirichlet``: label skew with per-class device proportions ~ Dirichlet(alpha), redrawn until
  every device holds at least ``min_size`` samples.

``quantity_weights`` adds optional quantity skew (lognormal device sizes) to iid and shards.
Every function returns a list of sorted index arrays, one per device.
"""

from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """A partition that cannot be made with the given data and settings."""


def _split_by_weights(indices: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """Contiguous pieces with sizes proportional to ``weights`` (largest-remainder rounding)."""
    raw = weights / weights.sum() * len(indices)
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: len(indices) - sizes.sum()]:
        sizes[i] += 1
    return np.split(indices, np.cumsum(sizes)[:-1])


def community_shares(bases: list[str], classes: list[list[int]], labels: dict[str, np.ndarray],
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Indices (into each community's dataset) per community.

    ``bases[i]`` names the images community i draws from (``inverse_mnist`` has base ``mnist``) and
    ``classes[i]`` its classes; ``labels[base]`` are that base's training labels. Every (base, class)
    is shuffled once and split evenly among the communities holding it, so shares are disjoint.
    """
    pieces: list[list[np.ndarray]] = [[] for _ in bases]
    for base in dict.fromkeys(bases):
        holders_by_class: dict[int, list[int]] = {}
        for i, (b, wanted) in enumerate(zip(bases, classes)):
            if b == base:
                for c in wanted:
                    holders_by_class.setdefault(int(c), []).append(i)
        for c, holders in sorted(holders_by_class.items()):
            members = rng.permutation(np.flatnonzero(labels[base] == c))
            for holder, share in zip(holders, np.array_split(members, len(holders))):
                pieces[holder].append(share)
    return [np.sort(np.concatenate(p)) for p in pieces]


def quantity_weights(num_devices: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Relative device sizes: all ones for skew = 0, else lognormal(0, skew)."""
    if skew == 0:
        return np.ones(num_devices)
    return rng.lognormal(0.0, skew, size=num_devices)


def _check_sizes(parts: list[np.ndarray], total: int, num_devices: int, where: str) -> list[np.ndarray]:
    empty = [j for j, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(f"{where}: devices {empty} would hold no samples ({total} samples for "
                             f"{num_devices} devices); use fewer devices or less quantity skew")
    return [np.sort(p) for p in parts]


def split_iid(indices: np.ndarray, num_devices: int, rng: np.random.Generator,
              weights: np.ndarray | None = None, where: str = "iid") -> list[np.ndarray]:
    if len(indices) < num_devices:
        raise PartitionError(f"{where}: {num_devices} devices but only {len(indices)} samples; use at most "
                             f"{len(indices)} devices (federation.devices_per_community) or more data")
    weights = np.ones(num_devices) if weights is None else weights
    parts = _split_by_weights(rng.permutation(indices), weights)
    return _check_sizes(parts, len(indices), num_devices, where)


def shard_classes(classes: np.ndarray, num_devices: int, classes_per_device: int,
                  rng: np.random.Generator, where: str = "shards") -> list[np.ndarray]:
    """The classes each device holds: round-robin over a shuffled class order."""
    if classes_per_device > len(classes):
        raise PartitionError(f"{where}: data.classes_per_device={classes_per_device} is larger than the "
                             f"{len(classes)} classes present ({classes.tolist()})")
    if num_devices * classes_per_device < len(classes):
        raise PartitionError(f"{where}: {num_devices} devices x classes_per_device={classes_per_device} "
                             f"cannot hold all {len(classes)} classes; raise data.classes_per_device or the "
                             f"number of devices")
    order = rng.permutation(classes)
    return [np.array([order[(j * classes_per_device + i) % len(order)] for i in range(classes_per_device)])
            for j in range(num_devices)]


def split_shards(indices: np.ndarray, labels: np.ndarray, num_devices: int, classes_per_device: int,
                 rng: np.random.Generator, weights: np.ndarray | None = None,
                 where: str = "shards") -> list[np.ndarray]:
    """Each device holds exactly ``classes_per_device`` classes; a class's samples are split among its
    holders (in proportion to their quantity weights)."""
    weights = np.ones(num_devices) if weights is None else weights
    present = np.unique(labels[indices])
    held = shard_classes(present, num_devices, classes_per_device, rng, where)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for c in present:
        holders = [j for j in range(num_devices) if c in held[j]]
        members = rng.permutation(indices[labels[indices] == c])
        if len(members) < len(holders):
            raise PartitionError(f"{where}: class {c} has {len(members)} samples, fewer than the {len(holders)} of the "
                                 f"community's {num_devices} devices that hold it (data.classes_per_device="
                                 f"{classes_per_device}); use fewer devices (federation.devices_per_community) or "
                                 f"fewer classes per device")
        for j, piece in zip(holders, _split_by_weights(members, weights[holders])):
            parts[j].append(piece)
    return _check_sizes([np.concatenate(p) for p in parts], len(indices), num_devices, where)


def split_sorted_shards(indices: np.ndarray, labels: np.ndarray, num_devices: int, shards_per_device: int,
                        rng: np.random.Generator, where: str = "sorted_shards") -> list[np.ndarray]:
    """Label-sorted shards of equal size (the remainder, fewer than one per shard, is left out), drawn
    without replacement, ``shards_per_device`` per device."""
    num_shards = num_devices * shards_per_device
    size = len(indices) // num_shards
    if size < 1:
        raise PartitionError(f"{where}: {len(indices)} samples cannot make {num_devices} devices x "
                             f"data.shards_per_device={shards_per_device} shards; lower data.shards_per_device")
    ordered = indices[np.argsort(labels[indices], kind="stable")]
    shards = rng.permutation(num_shards).reshape(num_devices, shards_per_device)
    return [np.sort(np.concatenate([ordered[s * size:(s + 1) * size] for s in device])) for device in shards]


def split_dirichlet(indices: np.ndarray, labels: np.ndarray, num_devices: int, alpha: float, min_size: int,
                    rng: np.random.Generator, weights: np.ndarray | None = None, max_tries: int = 1000,
                    where: str = "dirichlet") -> list[np.ndarray]:
    """Per class, device proportions ~ Dirichlet(alpha); smaller alpha = stronger label skew."""
    if alpha <= 0:
        raise PartitionError(f"{where}: data.dirichlet_alpha must be > 0, got {alpha}")
    if len(indices) < num_devices * max(min_size, 1):
        raise PartitionError(f"{where}: {len(indices)} samples cannot give {num_devices} devices at least "
                             f"{max(min_size, 1)} each (data.dirichlet_min_size)")
    weights = np.ones(num_devices) if weights is None else weights
    present = np.unique(labels[indices])
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
        for c in present:
            members = rng.permutation(indices[labels[indices] == c])
            proportions = rng.dirichlet(np.full(num_devices, alpha)) * weights
            cuts = (np.cumsum(proportions / proportions.sum()) * len(members)).astype(int)[:-1]
            for j, piece in enumerate(np.split(members, cuts)):
                parts[j].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= max(min_size, 1):
            return [np.sort(p) for p in merged]
    raise PartitionError(f"{where}: no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave every device "
                         f"at least {min_size} samples; raise data.dirichlet_alpha or lower data.dirichlet_min_size")


def partition_devices(indices: np.ndarray, labels: np.ndarray, num_devices: int, data_cfg,
                      rng: np.random.Generator, where: str) -> list[np.ndarray]:
    """Split one community's ``indices`` among ``num_devices`` as ``data.partition`` says."""
    weights = quantity_weights(num_devices, float(data_cfg.quantity_skew), rng)
    kind = data_cfg.partition
    if kind == "iid":
        return split_iid(indices, num_devices, rng, weights, where)
    if kind == "shards":
        return split_shards(indices, labels, num_devices, int(data_cfg.classes_per_device), rng, weights, where)
    if kind == "sorted_shards":
        if data_cfg.quantity_skew:
            raise PartitionError(f"{where}: data.quantity_skew does not apply to sorted_shards (equal shards); "
                                 f"set it to 0 or use data.partition=shards")
        return split_sorted_shards(indices, labels, num_devices, int(data_cfg.shards_per_device), rng, where)
    if kind == "dirichlet":
        return split_dirichlet(indices, labels, num_devices, float(data_cfg.dirichlet_alpha),
                               int(data_cfg.dirichlet_min_size), rng, weights, where=where)
    raise PartitionError(f"data.partition: unknown partition '{kind}'; choose iid, shards, sorted_shards or dirichlet")
