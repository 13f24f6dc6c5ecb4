"""What crosses Flower's channel: tensors as Flower records, and a device's place in the federation."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: Array(t.detach().cpu().contiguous().numpy()) for name, t in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


def global_device_index(cfg, community: int, device: int) -> int:
    from fedgen_pl.config import devices_per_community

    counts = devices_per_community(cfg)
    return sum(counts[:community]) + device
