"""Images as the networks see them: uint8 [0, 255] -> float32 [-1, 1] (tanh's range). The one conversion,
used by the training batches, the evaluation classifier and the metrics."""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_images(x: Tensor) -> Tensor:
    """uint8 images to float32 in [-1, 1]; other data (already normalised images, vectors) as float32."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()
