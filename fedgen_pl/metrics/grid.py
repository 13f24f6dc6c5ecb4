"""Mode coverage on the 2-D Gaussian grid (docs/method.md §10).

A sample is *high quality* when it lies within ``3 * std`` of some mode centre; a mode is *covered*
when at least ``min_share`` (1%) of all samples lie within ``3 * std`` of it; a sample is *on label*
when it lies within ``3 * std`` of the centre of the label it was generated for.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_metrics(samples: Tensor, centres: Tensor, std: float, labels: Tensor | None = None,
                 min_share: float = 0.01) -> dict[str, float]:
    distance = torch.cdist(samples.double(), centres.double())         # [M, modes]
    near = distance <= 3 * std
    per_mode = near.sum(0)
    metrics = {
        "modes_covered": int((per_mode >= min_share * len(samples)).sum()),
        "high_quality_share": float(near.any(1).double().mean()),
    }
    if labels is not None:
        metrics["on_label_share"] = float(near[torch.arange(len(samples)), labels].double().mean())
    return metrics
