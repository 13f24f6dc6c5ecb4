"""The federated data: communities and devices from ``federation.communities``.

All training data lives in one tensor ordered device by device (community-major), so a training
step draws a batch for every device at once by index arithmetic: no per-device DataLoaders. The
Lightning dataloader only ticks (it yields the iteration number); the model pulls the batch with
``sample_real`` using its own seeded generator, which keeps the draw reproducible and resumable.
``FederatedData`` needs no Lightning, so a deployed device (the Flower ClientApp) builds its share without
importing it; ``datamodules.datamodule.FederatedDataModule`` is its Lightning face.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.partition import PartitionError, community_shares, partition_devices
from datamodules.sources import SourceData, load_source
from fedgen_pl.config import ConfigError, devices_per_community
from fedgen_pl.images import normalise_images
from fedgen_pl.spec import FederationSpec

log = logging.getLogger("fedgen")


def fake_label_probs(label_histogram: Tensor, community_of: list[int]) -> dict[str, Tensor]:
    """Per device ``[N, L]``, the label distributions of ``federation.fake_labels`` other than
    ``device``: ``community`` is uniform over the labels any device of its community holds, ``pooled``
    uniform over the labels any device holds."""
    community = torch.tensor(community_of)
    present = label_histogram > 0
    num_communities = int(community.max()) + 1
    in_community = torch.zeros(num_communities, present.shape[1], dtype=torch.bool)
    for k in range(num_communities):
        in_community[k] = present[community == k].any(0)
    per_device = in_community[community].float()
    pooled = present.any(0, keepdim=True).float().expand_as(per_device)
    return {"community": per_device / per_device.sum(1, keepdim=True),
            "pooled": (pooled / pooled.sum(1, keepdim=True)).contiguous()}


class FederatedData:
    def __init__(self, cfg):
        super().__init__()          # FederatedDataModule puts LightningDataModule next in line
        self.cfg = cfg
        self.spec: FederationSpec | None = None

    # -- building ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        communities = list(cfg.federation.communities)
        names = [c.data for c in communities]
        sources: dict[str, SourceData] = {name: load_source(cfg, name) for name in dict.fromkeys(names)}
        classes = []
        self.classes_without_images: dict[str, list[int]] = {}      # left out of a community that lists no classes
        for i, community in enumerate(communities):
            source = sources[community.data]
            wanted = list(range(source.num_classes)) if community.classes is None else list(community.classes)
            bad = [c for c in wanted if not 0 <= c < source.num_classes]
            if bad:
                raise ConfigError(f"federation.communities[{i}].classes: {bad} not in dataset '{community.data}' "
                                  f"(classes 0..{source.num_classes - 1})")
            present = set(torch.unique(source.train_y).tolist())
            absent = [c for c in wanted if c not in present]
            if absent and (community.classes is not None or len(absent) == len(wanted)):
                raise ConfigError(f"class(es) {absent} of '{community.data}' have no training images "
                                  f"({source.origin or 'its loader'}); list only classes with images, or fix the data",
                                  where=f"federation.communities[{i}].classes")
            if source.train_x.dim() >= 3 and not torch.isin(source.test_y, torch.tensor(wanted)).any():
                raise ConfigError(f"'{community.data}' has no test images of classes {wanted} "
                                  f"({source.origin or 'its loader'}); the metrics need them: add test images",
                                  where=f"federation.communities[{i}]")
            if absent:
                log.warning("community %d: '%s' has no training images of class(es) %s; it trains on the other %d "
                            "(recorded in summary.json)", i, community.data, absent, len(wanted) - len(absent))
                self.classes_without_images[f"community_{i}"] = absent
            classes.append([c for c in wanted if c in present])
        shapes = {name: tuple(s.train_x.shape[1:]) for name, s in sources.items()}
        if len(set(shapes.values())) > 1:
            raise ConfigError(f"federation.communities: datasets have different sample shapes {shapes}; one "
                              f"generator architecture needs one shape")

        label_of = self._label_space(names, classes, sources)
        num_labels = max(label_of.values()) + 1
        lookups = {name: torch.tensor([label_of.get((name, c), -1) for c in range(s.num_classes)])
                   for name, s in sources.items()}

        rng = np.random.default_rng(int(cfg.seed))
        bases = [sources[name].base for name in names]
        base_labels = {sources[name].base: sources[name].train_y.numpy() for name in names}
        shares = community_shares(bases, classes, base_labels, rng)
        device_counts = devices_per_community(cfg)
        xs, ys, sizes, self.partition = [], [], [], []
        for k, (name, share) in enumerate(zip(names, shares)):
            source = sources[name]
            where = f"community {k} ({name}, {len(share)} samples)"
            if len(share) < int(cfg.data.batch_size):      # degenerate data: not even one batch to train on
                raise ConfigError(f"community {k} trains on {len(share)} images of '{name}' "
                                  f"({source.origin or 'its loader'}), fewer than one batch (data.batch_size="
                                  f"{cfg.data.batch_size}); add images, give the community more classes, or lower "
                                  f"data.batch_size", where=f"federation.communities[{k}]")
            try:
                devices = partition_devices(share, source.train_y.numpy(), device_counts[k], cfg.data, rng, where)
            except PartitionError as err:
                raise ConfigError(str(err)) from None
            self.partition.append([d.tolist() for d in devices])
            for indices in devices:
                indices = torch.from_numpy(indices)
                xs.append(source.train_x[indices])
                ys.append(lookups[name][source.train_y[indices]])
                sizes.append(len(indices))
        community_of = [k for k, count in enumerate(device_counts) for _ in range(count)]
        self.train_x = torch.cat(xs)
        self.train_y = torch.cat(ys)
        self.device_sizes = torch.tensor(sizes)
        # a device with fewer samples than one batch draws repeats (batches are drawn with replacement): said once
        self.devices_below_batch = {n: size for n, size in enumerate(sizes) if size < int(cfg.data.batch_size)}
        if self.devices_below_batch:
            log.warning("%d device(s) hold fewer samples than data.batch_size=%d (%s); their batches repeat samples "
                        "(recorded in summary.json)", len(self.devices_below_batch), int(cfg.data.batch_size),
                        ", ".join(f"device {n}: {size}" for n, size in list(self.devices_below_batch.items())[:5]))
        self.device_offsets = torch.cumsum(self.device_sizes, 0) - self.device_sizes
        self.label_histogram = torch.stack([torch.bincount(y, minlength=num_labels) for y in ys]).float()
        self.fake_label_probs = fake_label_probs(self.label_histogram, community_of)

        # Each community's test data: its dataset's test split, restricted to its classes.
        self.community_test = []
        for name, wanted in zip(names, classes):
            source = sources[name]
            keep = torch.isin(source.test_y, torch.tensor(wanted))
            self.community_test.append((source.test_x[keep], lookups[name][source.test_y[keep]]))
        self.sources = sources
        self.lookups = lookups
        self.community_data, self.community_classes = names, classes
        self.spec = FederationSpec(
            data_shape=tuple(self.train_x.shape[1:]),
            num_labels=num_labels,
            label_names=self.label_names,
            label_classes=self.label_classes,
            community_names=[f"{k}:{name}" for k, name in enumerate(names)],
            devices_per_community=device_counts,
            device_sample_counts=sizes,
            community_labels=[sorted({label for n in range(len(ys)) if community_of[n] == k
                                      for label in torch.unique(ys[n]).tolist()}) for k in range(len(names))],
        )

    def _label_space(self, names, classes, sources) -> dict[tuple[str, int], int]:
        """Global label of every (dataset, class): ``union`` numbers the pairs in order of first
        appearance; ``shared`` uses the class index itself (same classes in every domain)."""
        label_of: dict[tuple[str, int], int] = {}
        if self.cfg.data.label_space == "union":
            for name, wanted in zip(names, classes):
                for c in wanted:
                    label_of.setdefault((name, c), len(label_of))
            self.label_names = [f"{name}:{sources[name].class_names[c]}" for name, c in label_of]
            self.label_classes = list(label_of)
        else:
            for name, wanted in zip(names, classes):
                for c in wanted:
                    label_of[(name, c)] = c
            num = max(label_of.values()) + 1
            first = sources[names[0]]
            self.label_names = [first.class_names[c] if c < first.num_classes else str(c) for c in range(num)]
            self.label_classes = [(names[0], c) for c in range(num)]
        return label_of

    def write_partition(self, run_dir: Path) -> None:
        """``partition.json`` (community -> device -> indices into the community's dataset), the
        per-device class histograms as ``partition_histogram.csv`` and ``plots/partition_histogram.png``."""
        payload = {
            "communities": [
                {"name": name, "devices": [{"device": j, "indices": idx} for j, idx in enumerate(devices)]}
                for name, devices in zip(self.spec.community_names, self.partition)
            ],
            "label_names": self.label_names,
        }
        (run_dir / "partition.json").write_text(json.dumps(payload))
        rows = self.histogram_rows()
        with open(run_dir / "partition_histogram.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["community", "device", *self.label_names])
            writer.writerows(rows)
        from fedgen_pl.plots import partition_histogram

        partition_histogram(self.label_histogram.cpu(), self.spec, run_dir / "plots" / "partition_histogram.png")

    def histogram_rows(self) -> list[list]:
        community = self.spec.community_of_device
        counts = self.devices_within_community()
        return [[community[n], counts[n], *self.label_histogram[n].int().tolist()]
                for n in range(self.spec.num_devices)]

    def devices_within_community(self) -> list[int]:
        return [j for count in self.spec.devices_per_community for j in range(count)]

    def labelled_splits(self) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """Every training image of the classes the federation uses (each dataset once, whichever
        community holds it) with its global label, and each dataset's test split likewise."""
        xs, ys, tests = [], [], {}
        for name, source in self.sources.items():
            lookup = self.lookups[name]
            keep = lookup[source.train_y] >= 0
            xs.append(source.train_x[keep])
            ys.append(lookup[source.train_y[keep]])
            keep = lookup[source.test_y] >= 0
            tests[name] = (source.test_x[keep], lookup[source.test_y[keep]])
        return torch.cat(xs), torch.cat(ys), tests

    def to(self, device: torch.device) -> "FederatedData":
        """Move the training tensors to ``device`` (the GPU when training on one)."""
        for name in ("train_x", "train_y", "device_sizes", "device_offsets", "label_histogram"):
            setattr(self, name, getattr(self, name).to(device))
        for name in self.fake_label_probs:
            self.fake_label_probs[name] = self.fake_label_probs[name].to(device)
        return self

    # -- sampling (inside the training step) --------------------------------------------------
    def source(self, name: str) -> SourceData:
        """A dataset by name, converted as the run's: one of the communities', or loaded now (anomalies)."""
        return self.sources[name] if name in self.sources else load_source(self.cfg, name)

    def sample_real(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` samples with replacement from every device: x ``[N, B, *shape]``, y ``[N, B]``."""
        n = len(self.device_sizes)
        u = torch.rand(n, batch_size, generator=generator, device=self.train_x.device)
        index = self.device_offsets[:, None] + (u * self.device_sizes[:, None]).long()
        self.last_real_index = index       # what a deployed run's test mode sends each device (fedgen_pl/flower/)
        return self.normalise(self.train_x[index]), self.train_y[index]

    def sample_fake_labels(self, batch_size: int, generator: torch.Generator, scope: str = "device") -> Tensor:
        """Labels ``[N, B]`` for each device's generated samples (``federation.fake_labels``):
        ``device`` draws from that device's own label histogram (the edge knows it); ``community``
        uniformly from the labels present in the device's community; ``pooled`` uniformly from every
        label of the federation (the centralized baseline's ``community``)."""
        if scope == "device":
            return torch.multinomial(self.label_histogram, batch_size, replacement=True, generator=generator)
        return torch.multinomial(self.fake_label_probs[scope], batch_size, replacement=True, generator=generator)

    normalise = staticmethod(normalise_images)
