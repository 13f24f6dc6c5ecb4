"""Evaluation of image generators: metrics every ``eval_every`` rounds and at the end, logged to every
logger, and sample grids per community and for the global generator (overwritten each time)."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from fedgen_pl.plots import image_grid


class GenerationMetrics(pl.Callback):
    """``build_evaluator(device)`` makes the ``GenerationEvaluator`` once training starts (the device is
    known then); building it trains or loads the classifier and computes the real statistics."""

    def __init__(self, build_evaluator, every_n_rounds: int, plot_dir: Path, per_label: int = 8):
        self.build_evaluator = build_evaluator
        self.evaluator = None
        self.every_n_rounds = every_n_rounds
        self.plot_dir = Path(plot_dir)
        self.per_label = per_label
        self.latest: dict[str, float] = {}
        self.eval_seconds = 0.0
        self._evaluated_round = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.evaluator is None:
            started = time.time()
            self.evaluator = self.build_evaluator(pl_module.device)
            self.setup_seconds = time.time() - started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = pl_module.round
        if done == self._evaluated_round or pl_module.local_iter != 0 or done == 0:
            return
        if done % self.every_n_rounds == 0 or pl_module.training_finished:
            self._evaluated_round = done
            started = time.time()
            self.latest = self.evaluator.evaluate(pl_module.sample_global)
            self.eval_seconds += time.time() - started
            pl_module.log_metrics(self.latest)
            save_sample_grids(pl_module, self.plot_dir, self.per_label)


def save_sample_grids(model, plot_dir: Path, per_label: int = 8) -> list[Path]:
    """``samples_global.png`` (one row per label) and ``samples_community_k.png`` (its labels)."""
    spec = model.spec
    generator = torch.Generator(device=model.device).manual_seed(4321)
    labels = torch.arange(spec.num_labels, device=model.device).repeat_interleave(per_label)
    images = model.sample_global(labels, generator)
    paths = [image_grid(images, plot_dir / "samples_global.png", nrow=per_label,
                        title=f"global generator, round {model.round}", row_labels=spec.label_names)]
    # Each community's rows: the labels its devices hold (G_k equals G after every aggregation).
    for k, (name, held) in enumerate(zip(spec.community_names, spec.community_labels)):
        rows = torch.cat([torch.arange(i * per_label, (i + 1) * per_label) for i in held])
        paths.append(image_grid(images[rows], plot_dir / f"samples_community_{k}.png", nrow=per_label,
                                title=f"community {name}, round {model.round}",
                                row_labels=[spec.label_names[i] for i in held]))
    return paths
