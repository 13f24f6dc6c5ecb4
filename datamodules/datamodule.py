"""``FederatedDataModule``: Lightning's face of ``FederatedData``. Its dataloader only ticks (it yields the
iteration number); the model draws every device's batch from the data itself."""

from __future__ import annotations

import itertools

import pytorch_lightning as pl
from torch.utils.data import DataLoader, IterableDataset

from datamodules.federated import FederatedData


class _Ticker(IterableDataset):
    """An endless stream of iteration numbers; training stops when the model says the last round ended."""

    def __iter__(self):
        return itertools.count()


class FederatedDataModule(FederatedData, pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticker(), batch_size=None)
