"""Dataset sources, registered by name (the ``data`` of a community in ``federation.communities``).

A source is a function ``load(cfg) -> SourceData`` returning the whole train and test split as
tensors with integer class labels. Add your own with ``@register_dataset("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SourceData:
    train_x: Tensor          # [n, *shape]; uint8 images or float vectors
    train_y: Tensor          # [n] int64 class index in 0..len(class_names)-1
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


SourceLoader = Callable[[object], SourceData]
SOURCES: dict[str, SourceLoader] = {}


def register_dataset(name: str):
    """Decorator: make ``load(cfg) -> SourceData`` usable as ``{data: name}`` in a community."""

    def decorate(fn: SourceLoader) -> SourceLoader:
        if name in SOURCES:
            raise ValueError(f"dataset '{name}' is already registered")
        SOURCES[name] = fn
        return fn

    return decorate


# -- the paper's simulated data ---------------------------------------------------------------


def grid_centres() -> Tensor:
    """The 9 mode centres on {-4, 0, 4}^2; mode c = 3 * i + j sits at (-4 + 4i, -4 + 4j)."""
    axis = torch.tensor([-4.0, 0.0, 4.0])
    return torch.cartesian_prod(axis, axis)


@register_dataset("gaussian_grid")
def gaussian_grid(cfg) -> SourceData:
    """2-D mixture of 9 Gaussians on the 3x3 grid, one class per mode (METHOD.md §4)."""
    centres = grid_centres()
    per_mode = cfg.data.gaussian_samples_per_mode
    generator = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)

    def draw(n: int):
        labels = torch.arange(len(centres)).repeat_interleave(n)
        points = centres[labels] + cfg.data.gaussian_std * torch.randn(len(labels), 2, generator=generator)
        return points, labels

    train_x, train_y = draw(per_mode)
    test_x, test_y = draw(max(1, per_mode // 5))
    names = [f"mode({int(x)},{int(y)})" for x, y in centres.tolist()]
    return SourceData(train_x, train_y, test_x, test_y, names)
