"""``fedgen train``: build the DataModule, the model, the callbacks and the Trainer, run, summarise."""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from callbacks import GaussianGridMetrics, GlobalAggregation, ImageSamples, RoundCheckpoint
from datamodules import FederatedDataModule
from fedgen_pl.system import FederatedGAN


def make_run_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(cfg.experiment).stem
        run_dir = Path("runs") / f"{name}-{stamp}"
        suffix = 1
        while run_dir.exists():  # two runs started in the same second
            run_dir = Path("runs") / f"{name}-{stamp}-{suffix}"
            suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers: list = [pl.loggers.CSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        loggers.append(pl.loggers.WandbLogger(project=cfg.logger.wandb_project, save_dir=str(run_dir),
                                              mode=cfg.logger.wandb_mode, name=run_dir.name,
                                              config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def log_partition(loggers: list, datamodule, run_dir: Path) -> None:
    """The per-device class histograms as a W&B table and image (the CSV and PNG are in run_dir)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            columns = ["community", "device", *datamodule.label_names]
            logger.log_table(key="partition/histogram", columns=columns, data=datamodule.histogram_rows())
            logger.log_image(key="partition/histogram_png", images=[str(run_dir / "plots" / "partition_histogram.png")])


def train(cfg: DictConfig) -> Path:
    """Train one run; returns its directory."""
    started = time.time()
    pl.seed_everything(int(cfg.seed), verbose=False)
    run_dir = make_run_dir(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml")

    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    datamodule.write_partition(run_dir)
    model = FederatedGAN(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())

    aggregation = GlobalAggregation()
    if len(datamodule.spec.data_shape) == 1:
        evaluation = GaussianGridMetrics(cfg.metrics.eval_every, cfg.metrics.grid_samples_per_label,
                                         cfg.data.gaussian_std, plot_dir=run_dir / "plots")
    else:
        evaluation = ImageSamples(run_dir / "plots", cfg.metrics.eval_every)
    checkpoint = RoundCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_rounds)
    loggers = build_loggers(cfg, run_dir)
    log_partition(loggers, datamodule, run_dir)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=1,
        logger=loggers,
        callbacks=[aggregation, evaluation, checkpoint],   # order matters: aggregate, evaluate, save
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
        trainer.fit(model, datamodule=datamodule)

    summary = {
        "experiment": cfg.experiment,
        "seed": int(cfg.seed),
        "rounds": model.round,
        "iterations": model.iteration,
        "wall_time_s": round(time.time() - started, 2),
        "metrics": getattr(evaluation, "latest", {}),
        "cloud_weights_last_round": aggregation.history[-1]["cloud_weights"] if aggregation.history else None,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for logger in trainer.loggers:
        logger.finalize("success")
    return run_dir
