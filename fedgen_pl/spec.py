"""What the model needs to know about the federation's data, produced by the DataModule."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FederationSpec:
    data_shape: tuple[int, ...]        # one sample, e.g. (2,) or (1, 28, 28)
    num_labels: int                    # size of the global label space
    label_names: list[str]             # "dataset:class" per global label
    label_classes: list[tuple[str, int]]  # (dataset, class index in that dataset) per global label
    community_names: list[str]         # one per community
    devices_per_community: list[int]   # J_k
    device_sample_counts: list[int]    # training samples held by each device (flat, community-major)
    community_labels: list[list[int]]  # the global labels each community's devices hold

    @property
    def num_communities(self) -> int:
        return len(self.devices_per_community)

    @property
    def num_devices(self) -> int:
        return sum(self.devices_per_community)

    @property
    def community_of_device(self) -> list[int]:
        return [k for k, count in enumerate(self.devices_per_community) for _ in range(count)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FederationSpec":
        values = dict(values)
        values["data_shape"] = tuple(values["data_shape"])
        values["label_classes"] = [tuple(pair) for pair in values["label_classes"]]
        return cls(**values)
