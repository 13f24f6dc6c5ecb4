"""Evaluation of image generators: metrics every ``eval_every`` rounds and at the end, logged to every
logger, and sample grids per community and for the global generator (overwritten each time)."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl

from fedgen_pl.plots import sample_grids


def log_images(trainer, key: str, paths: list[Path], step: int) -> None:
    """Send image files to the loggers that take images (W&B), one key per file: ``key/<file stem>``."""
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            for path in paths:
                logger.log_image(key=f"{key}/{Path(path).stem}", images=[str(path)], step=step)


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
            started = time.time()
            # Inception (fid_inception, kid_inception) at the last evaluation only: minutes per 10,000 images on CPU
            self.latest = {**self.evaluator.evaluate_model(pl_module, inception=pl_module.training_finished),
                           **pl_module.privacy_metrics()}
            self.eval_seconds += time.time() - started
            pl_module.log_metrics(self.latest)
            paths = sample_grids(pl_module, self.plot_dir, self.per_label)
            if getattr(pl_module, "has_ema", False):
                with pl_module.ema_weights():
                    paths += sample_grids(pl_module, self.plot_dir / "ema", self.per_label)
            log_images(trainer, "samples", paths, step=pl_module.iteration)

    @property
    def headline(self) -> tuple[str, float] | None:
        """The progress bar's metric: the global generator's classifier FID."""
        value = self.latest.get("global/fid_classifier")
        return None if value is None else ("fid", value)
