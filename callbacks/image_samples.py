"""Sample grids of the global generator: one row per label, written every ``every_n_rounds`` rounds
(overwriting) and at the end of training."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from fedgen_pl.plots import image_grid


class ImageSamples(pl.Callback):
    def __init__(self, plot_dir: Path, every_n_rounds: int, per_label: int = 8):
        self.plot_dir = Path(plot_dir)
        self.every_n_rounds = every_n_rounds
        self.per_label = per_label
        self.latest_path: Path | None = None

    def save(self, pl_module) -> Path:
        spec = pl_module.spec
        generator = torch.Generator(device=pl_module.device).manual_seed(4321)
        labels = torch.arange(spec.num_labels, device=pl_module.device).repeat_interleave(self.per_label)
        images = pl_module.sample_global(labels, generator)
        path = self.plot_dir / "samples_global.png"
        self.latest_path = image_grid(images, path, nrow=self.per_label,
                                      title=f"global generator, round {pl_module.round}",
                                      row_labels=spec.label_names)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.local_iter != 0 or pl_module.round == 0:
            return
        if pl_module.round % self.every_n_rounds == 0 or pl_module.training_finished:
            self.save(pl_module)
