"""Federated data: dataset sources, partitions into communities and devices, and the DataModule."""

from datamodules.federated import FederatedDataModule
from datamodules.sources import SOURCES, SourceData, register_dataset

__all__ = ["FederatedDataModule", "SOURCES", "SourceData", "register_dataset"]
