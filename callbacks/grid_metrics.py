"""Evaluation of the global generator on the Gaussian grid: metrics every ``eval_every`` rounds and a
scatter plot of its samples over the mode centres at the end."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks.generation_metrics import log_images
from datamodules.sources import grid_centres
from fedgen_pl.metrics.grid import grid_metrics


class GaussianGridMetrics(pl.Callback):
    def __init__(self, every_n_rounds: int, samples_per_label: int, std: float, plot_dir: Path | None = None):
        self.every_n_rounds = every_n_rounds
        self.samples_per_label = samples_per_label
        self.std = std
        self.plot_dir = plot_dir
        self.latest: dict[str, float] = {}
        self._evaluated_round = -1

    @staticmethod
    def centres(pl_module) -> torch.Tensor:
        """The mode centre of every global label (the modes the federation's data holds)."""
        return grid_centres()[[c for _, c in pl_module.spec.label_classes]]

    def evaluate(self, pl_module) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        # A fixed evaluation generator: every evaluation (and every run) sees the same latents.
        generator = torch.Generator(device=pl_module.device).manual_seed(12345)
        centres = self.centres(pl_module)
        labels = torch.arange(len(centres), device=pl_module.device).repeat_interleave(self.samples_per_label)
        samples = pl_module.sample_global(labels, generator).float().cpu()
        conditional = bool(pl_module.cfg.model.conditional)
        metrics = grid_metrics(samples, centres, self.std, labels.cpu() if conditional else None)
        return metrics, samples, labels.cpu()

    def state_dict(self) -> dict:
        return {"evaluated_round": self._evaluated_round, "latest": dict(self.latest)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._evaluated_round, self.latest = state_dict["evaluated_round"], dict(state_dict["latest"])

    def on_round_end(self, trainer, pl_module) -> None:
        done = pl_module.round
        if done == self._evaluated_round:
            return
        if done % self.every_n_rounds == 0 or pl_module.training_finished:
            self._evaluated_round = done
            metrics, samples, labels = self.evaluate(pl_module)
            # the names of metrics.csv and `fedgen eval`, in summary.json and the printed summary alike
            self.latest = {f"global/{k}": v for k, v in metrics.items()}
            if getattr(pl_module, "has_ema", False):
                with pl_module.ema_weights():
                    self.latest.update({f"ema/global/{k}": v for k, v in self.evaluate(pl_module)[0].items()})
            self.latest.update(pl_module.privacy_metrics())
            pl_module.log_metrics(self.latest)
            if pl_module.training_finished and self.plot_dir is not None:
                from fedgen_pl.plots import scatter_grid

                centres = self.centres(pl_module)
                path = scatter_grid(samples, labels, centres, self.std, self.plot_dir / "global_samples.png",
                             title=f"global generator, round {done}: {metrics['modes_covered']}/{len(centres)} modes, "
                                   f"high quality {metrics['high_quality_share']:.3f}")
                log_images(trainer, "samples", [path], step=pl_module.iteration)

    @property
    def headline(self) -> tuple[str, float] | None:
        """The progress bar's metric: the global generator's high-quality share."""
        value = self.latest.get("global/high_quality_share")
        return None if value is None else ("hq", value)
