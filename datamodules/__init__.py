"""Federated data: dataset sources, partitions into communities and devices, and the DataModule."""

from datamodules.federated import FederatedData
from datamodules.sources import SOURCES, SourceData, register_dataset

__all__ = ["FederatedData", "FederatedDataModule", "SOURCES", "SourceData", "register_dataset"]


def __getattr__(name: str):
    # Imported on first use: Lightning costs a deployed device ~3 s of CPU at start-up, and it needs none.
    if name == "FederatedDataModule":
        from datamodules.datamodule import FederatedDataModule
        return FederatedDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
