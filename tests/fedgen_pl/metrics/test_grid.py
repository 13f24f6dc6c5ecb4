"""Gaussian-grid metrics on hand-placed samples."""

import torch

from datamodules.sources import grid_centres
from fedgen_pl.metrics.grid import grid_metrics


def test_grid_metrics_hand_placed():
    centres = grid_centres()
    std = 0.2
    # 100 samples: 60 exactly on mode 0, 39 on mode 4, 1 on mode 8 (below the 1% threshold? 1% of 100 = 1,
    # so exactly 1 sample counts), plus nothing else.
    samples = torch.cat([centres[[0]].repeat(60, 1), centres[[4]].repeat(39, 1), centres[[8]]])
    labels = torch.cat([torch.zeros(60), torch.full((39,), 5), torch.tensor([8])]).long()
    m = grid_metrics(samples, centres, std, labels)
    assert m["modes_covered"] == 3
    assert m["high_quality_share"] == 1.0
    assert abs(m["on_label_share"] - 61 / 100) < 1e-12   # the 39 samples for label 5 sit on mode 4


def test_far_samples_are_low_quality():
    centres = grid_centres()
    samples = torch.tensor([[2.0, 2.0], [0.5, 0.0], [0.61, 0.0], [0.59, 0.0]])   # 3*std = 0.6
    m = grid_metrics(samples, centres, 0.2)
    assert m["high_quality_share"] == 0.5
    assert "on_label_share" not in m
