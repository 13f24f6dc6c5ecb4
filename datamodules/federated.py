"""The federated DataModule: communities and devices from ``federation.communities``.

All training data lives in one tensor ordered device by device (community-major), so a training
step draws a batch for every device at once by index arithmetic: no per-device DataLoaders. The
Lightning dataloader only ticks (it yields the iteration number); the model pulls the batch with
``sample_real`` using its own seeded generator, which keeps the draw reproducible and resumable.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from datamodules.partition import community_shares, split_iid
from datamodules.sources import SOURCES, SourceData
from fedgen_pl.config import ConfigError, devices_per_community
from fedgen_pl.spec import FederationSpec


class _Ticker(IterableDataset):
    """An endless stream of iteration numbers; training stops when the model says the last round ended."""

    def __iter__(self):
        return itertools.count()


class FederatedDataModule(pl.LightningDataModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.spec: FederationSpec | None = None

    # -- building ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        communities = list(cfg.federation.communities)
        names = [c.data for c in communities]
        sources: dict[str, SourceData] = {name: SOURCES[name](cfg) for name in dict.fromkeys(names)}
        classes = []
        for i, community in enumerate(communities):
            source = sources[community.data]
            wanted = list(range(source.num_classes)) if community.classes is None else list(community.classes)
            bad = [c for c in wanted if not 0 <= c < source.num_classes]
            if bad:
                raise ConfigError(f"federation.communities[{i}].classes: {bad} not in dataset '{community.data}' "
                                  f"(classes 0..{source.num_classes - 1})")
            classes.append(wanted)

        # Global label space: the union of (dataset, class) pairs in order of first appearance.
        label_of: dict[tuple[str, int], int] = {}
        for name, wanted in zip(names, classes):
            for c in wanted:
                label_of.setdefault((name, c), len(label_of))
        self.label_names = [f"{name}:{sources[name].class_names[c]}" for name, c in label_of]

        generator = torch.Generator().manual_seed(int(cfg.seed))
        shares = community_shares(names, classes, {n: s.train_y for n, s in sources.items()}, generator)
        device_counts = devices_per_community(cfg)
        xs, ys, sizes, self.partition = [], [], [], []
        for k, (name, share) in enumerate(zip(names, shares)):
            if len(share) < device_counts[k]:
                raise ConfigError(f"federation.devices_per_community: community {k} ({name}) has {len(share)} "
                                  f"samples but {device_counts[k]} devices")
            source = sources[name]
            lookup = torch.tensor([label_of.get((name, c), -1) for c in range(source.num_classes)])
            devices = split_iid(share, device_counts[k], generator)
            self.partition.append([d.tolist() for d in devices])
            for indices in devices:
                xs.append(source.train_x[indices])
                ys.append(lookup[source.train_y[indices]])
                sizes.append(len(indices))
        self.train_x = torch.cat(xs)
        self.train_y = torch.cat(ys)
        self.device_sizes = torch.tensor(sizes)
        self.device_offsets = torch.cumsum(self.device_sizes, 0) - self.device_sizes
        num_labels = len(label_of)
        self.label_histogram = torch.stack([torch.bincount(y, minlength=num_labels) for y in ys]).float()
        self.sources = sources
        self.spec = FederationSpec(
            data_shape=tuple(self.train_x.shape[1:]),
            num_labels=num_labels,
            label_names=self.label_names,
            label_classes=list(label_of),
            community_names=[f"{k}:{name}" for k, name in enumerate(names)],
            devices_per_community=device_counts,
            device_sample_counts=sizes,
        )

    def to(self, device: torch.device) -> "FederatedDataModule":
        """Move the training tensors to ``device`` (the GPU when training on one)."""
        for name in ("train_x", "train_y", "device_sizes", "device_offsets", "label_histogram"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def write_partition(self, path: Path) -> None:
        """The partition map: community -> device -> indices into the community's dataset."""
        payload = {
            "communities": [
                {"name": name, "devices": [{"device": j, "indices": idx} for j, idx in enumerate(devices)]}
                for name, devices in zip(self.spec.community_names, self.partition)
            ],
            "label_names": self.label_names,
        }
        path.write_text(json.dumps(payload))

    # -- sampling (inside the training step) --------------------------------------------------
    def sample_real(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` samples with replacement from every device: x ``[N, B, *shape]``, y ``[N, B]``."""
        n = len(self.device_sizes)
        u = torch.rand(n, batch_size, generator=generator, device=self.train_x.device)
        index = self.device_offsets[:, None] + (u * self.device_sizes[:, None]).long()
        return self.normalise(self.train_x[index]), self.train_y[index]

    def sample_fake_labels(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Labels for each device's generated samples, drawn from that device's own label histogram."""
        return torch.multinomial(self.label_histogram, batch_size, replacement=True, generator=generator)

    @staticmethod
    def normalise(x: Tensor) -> Tensor:
        """uint8 images to [-1, 1] floats; float data passes through."""
        if x.dtype == torch.uint8:
            return x.float().div_(127.5).sub_(1.0)
        return x

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticker(), batch_size=None)
