"""``fedgen train``: build the DataModule, the model, the callbacks and the Trainer, run, summarise."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import shutil
import sys
import time
import warnings
from datetime import datetime
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks import (FederationProgressBar, GaussianGridMetrics, GenerationMetrics, GlobalAggregation, PlainProgress,
                       RoundCheckpoint)
from datamodules import FederatedDataModule
from datamodules.sources import check_dataset
from fedgen_pl.aggregation import get_aggregation
from fedgen_pl.config import ConfigError
from fedgen_pl import cpu
from fedgen_pl.errors import RunDirError, check_writable_dir, release_held_logs
from fedgen_pl.metrics.evaluator import build_evaluator
from fedgen_pl.models import model_class
from fedgen_pl.privacy import check_config as check_privacy_config, describe as describe_privacy, privacy_record
from fedgen_pl.provenance import provenance
from fedgen_pl.recipes import check_recipe_config, recipe_of

log = logging.getLogger("fedgen")


class _WithoutTips(logging.Filter):
    """Lightning's tips and its hardware banner are not our output (the accelerator is in config.yaml)."""

    NOISE = ("litlogger", "GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_WithoutTips())
# Lightning 2.6 calls a torch pytree API that torch deprecates; nothing for a user to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "checkpoints")
INCEPTION_PROGRESS = "inception_progress"     # the last evaluation's Inception features so far (SavedFeatures)
SEGMENTS_FILE = "segments.jsonl"      # one line per start or resume: when, which commit, which hardware


def record_segment(run_dir: Path, resumed_from: str | None) -> None:
    """Append this process's start to the run's segments: a run resumed elsewhere names every commit and
    machine that trained it (``summary.json``'s ``trained``, and the tables' header)."""
    segment = {**provenance(), "resumed_from": resumed_from}
    with open(run_dir / SEGMENTS_FILE, "a") as f:
        f.write(json.dumps(segment) + "\n")


def read_segments(run_dir: Path) -> list[dict]:
    path = run_dir / SEGMENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


IN_USE_FILE = ".in_use"    # flock-ed while a process trains the run; the kernel frees it when the process dies


def run_in_use(run_dir: Path) -> str | None:
    """Which process trains ``run_dir`` now ("pid 1234"), or None (also when it was killed: flock dies with it)."""
    path = Path(run_dir) / IN_USE_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = f.read().strip()
            return f"pid {pid}" if pid.isdigit() else "pid unknown"
    return None


def _in_use_error(run_dir: Path, holder: str | None) -> RunDirError:
    return RunDirError(f"is being trained by another process ({holder or 'pid unknown'}); wait for it to end, or "
                       f"choose another output_dir", where=f"output_dir={run_dir}")


def hold_run_dir(run_dir: Path):
    """Mark ``run_dir`` as being trained by this process until the returned file is closed, so that no
    second process (a resume, a table, another lane) trains or moves it meanwhile."""
    f = open(run_dir / IN_USE_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise _in_use_error(run_dir, run_in_use(run_dir)) from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def plan_run_dir(cfg: DictConfig) -> Path:
    """The run directory (not created yet). A directory that already holds a run is refused unless the
    run is being resumed, and one that a live process trains is refused always: nothing of an earlier run
    is ever overwritten."""
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
        check_writable_dir(run_dir, "output_dir")
        holder = run_in_use(run_dir)
        if holder is not None:
            raise _in_use_error(run_dir, holder)
        held = [name for name in RUN_FILES if (run_dir / name).exists()]
        if held and not cfg.resume:
            if (run_dir / "checkpoints" / "last.ckpt").is_file():
                hint = f"continue it with resume={run_dir}"
            else:                     # stopped before its first checkpoint: nothing to resume from
                hint = "it stopped before its first checkpoint: remove it to start it again"
            raise RunDirError(f"holds a run already ({', '.join(held)}); {hint}, or choose another output_dir",
                              where=f"output_dir={run_dir}")
        return run_dir
    check_writable_dir(Path("runs"), "output_dir")         # runs/ in the working directory by default
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(cfg.experiment).stem
    run_dir = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():  # two runs started in the same second
        run_dir = Path("runs") / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return run_dir


def resolve_names(cfg: DictConfig):
    """Resolve every registered name of ``cfg`` (each registry raises a ConfigError naming its key) and let
    the model family check the settings it depends on. Returns the model class."""
    cls = model_class(cfg.model.name)
    get_aggregation(cfg.federation.aggregation)
    for i, community in enumerate(cfg.federation.communities):
        check_dataset(cfg, community.data, f"federation.communities[{i}].data")
    if cfg.metrics.anomaly_data is not None:
        check_dataset(cfg, cfg.metrics.anomaly_data, "metrics.anomaly_data")
    check_recipe_config(cfg)
    check_privacy_config(cfg, recipe_of(cfg.model.name))
    return cls


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU asked for must exist (before anything is written; Lightning would fail later with a traceback)."""
    wanted = cfg.trainer.accelerator
    if wanted in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"'{wanted}' but torch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                          f"use trainer.accelerator=auto or cpu", where="trainer.accelerator")
    if wanted == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("'mps' but this machine has no Apple GPU; use trainer.accelerator=auto or cpu",
                          where="trainer.accelerator")


def auto_precision(on_cpu: bool, cpu_bf16: bool, gan: bool, images: bool, deployed: bool) -> str:
    """``trainer.precision=auto``: ``bf16-mixed`` only where it was measured to keep the results and to pay
    (docs/results/precision_and_ema.md: the GANs on images, in one process, on a CPU where bf16 pays);
    ``32-true`` elsewhere: GPUs (not measured), other CPUs (bf16 slower or emulated), the VAEs and vector
    data (not measured), a Flower deployment (its devices train in fp32)."""
    return "bf16-mixed" if on_cpu and cpu_bf16 and gan and images and not deployed else "32-true"


def resolve_precision(cfg: DictConfig, spec, deployed: bool = False) -> str:
    """The precision a run trains at: ``trainer.precision``, with ``auto`` resolved on this machine."""
    if cfg.trainer.precision != "auto":
        return str(cfg.trainer.precision)
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    on_cpu = cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not gpu)
    return auto_precision(on_cpu, cpu.cpu_bf16_pays(), recipe_of(cfg.model.name).family == "gan",
                          len(spec.data_shape) == 3, deployed)


WANDB_ID_FILE = "wandb_run_id.txt"


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list:
    """A CSV logger (``metrics.csv``) and, with ``logger.wandb``, a W&B run. Resuming at ``resume_step``
    keeps the CSV rows up to that step and continues the same W&B run."""
    kept = read_csv_rows(run_dir / "metrics.csv", resume_step) if resume_step is not None else []
    csv_logger = pl.loggers.CSVLogger(save_dir=str(run_dir), name="", version="")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        writer = csv_logger.experiment      # starts a new metrics.csv: write the kept rows into it at once
    writer.metrics.extend(kept)
    writer.save()
    loggers: list = [csv_logger]
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
        wandb_logger = pl.loggers.WandbLogger(project=cfg.logger.wandb_project, save_dir=str(run_dir),
                                              mode=cfg.logger.wandb_mode, name=run_dir.name, id=run_id,
                                              resume="allow" if run_id else None,
                                              config=OmegaConf.to_container(cfg, resolve=True))
        id_file.write_text(wandb_logger.experiment.id + "\n")
        loggers.append(wandb_logger)
    return loggers


def read_csv_rows(path: Path, max_step: int) -> list[dict]:
    """The rows of a run's ``metrics.csv`` logged at steps up to ``max_step`` (empty cells dropped)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return [row for row in rows if int(float(row.get("step", 0))) <= max_step]


def check_partition(partition: list[list[list[int]]], saved, checkpoint: str) -> None:
    """A resumed run must see the same devices' data as the run that wrote ``checkpoint``."""
    if saved is None:
        return
    rebuilt = [[list(map(int, device)) for device in community] for community in partition]
    stored = [[device.tolist() for device in community] for community in saved]
    if rebuilt != stored:
        raise ConfigError(f"resume: the partition rebuilt from the data differs from the one in {checkpoint} "
                          f"(did the dataset files or data.* settings change?); start a new run")


def log_partition(loggers: list, datamodule, run_dir: Path) -> None:
    """The per-device class histograms as a W&B table and image (the CSV and PNG are in run_dir)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            columns = ["community", "device", *datamodule.label_names]
            logger.log_table(key="partition/histogram", columns=columns, data=datamodule.histogram_rows())
            logger.log_image(key="partition/histogram_png", images=[str(run_dir / "plots" / "partition_histogram.png")])


def train(cfg: DictConfig, extra_callbacks: list | None = None, device_transport=None) -> Path:
    """Train one run; returns its directory. ``extra_callbacks`` run after the built-in ones.
    With ``cfg.resume`` (a checkpoint, set by ``fedgen_pl.resume.resume_config``) the run continues.
    ``device_transport`` runs the devices' side elsewhere (fedgen_pl/flower/); None: in this process."""
    started, cpu_started = time.time(), time.process_time()
    # Everything that can fail on bad input runs before the run directory is written.
    model_cls = resolve_names(cfg)
    check_accelerator(cfg)
    run_dir = plan_run_dir(cfg)
    pl.seed_everything(int(cfg.seed), verbose=False)
    resume_state = None
    if cfg.resume:
        resume_state = torch.load(cfg.resume, map_location="cpu", weights_only=True)["federation_state"]

    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    if resume_state is not None:
        check_partition(datamodule.partition, resume_state.get("partition"), cfg.resume)
    cfg.trainer.precision = resolve_precision(cfg, datamodule.spec, deployed=device_transport is not None)
    model = model_cls(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())
    if device_transport is not None:
        model.device_transport = device_transport
        model.federation.clock = device_transport.clock_for(model)       # real replies drive the step loop

    # room for two checkpoints (last and previous): parameters, buffers and Adam's two moments
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_writable_dir(run_dir, "output_dir", need_bytes=2 * 3 * state_bytes)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    in_use = hold_run_dir(run_dir)          # before the first write; a clash here leaves the other run alone
    release_held_logs()                  # the input is good: the log lines held while checking it follow
    log.info(describe_privacy(model.privacy, cfg))
    try:
        OmegaConf.save(cfg, run_dir / "config.yaml")
        datamodule.write_partition(run_dir)
        trainer, aggregation, evaluation, loggers = build_trainer(cfg, datamodule, run_dir, resume_state,
                                                                  extra_callbacks, (started, cpu_started))
        record_segment(run_dir, cfg.resume)
    except BaseException:
        in_use.close()
        if created:      # a start that fails leaves no half-made run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    with in_use:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
                trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.resume or None, weights_only=True)
        except BaseException:
            finish_wandb(loggers, exit_code=1)
            raise
        return summarise(cfg, model, run_dir, (started, cpu_started), aggregation, evaluation, trainer, loggers)


def build_trainer(cfg: DictConfig, datamodule, run_dir: Path, resume_state: dict | None, extra_callbacks,
                  started: tuple[float, float] | None = None):
    """The callbacks, loggers and Trainer of a run; ``started``: when this process began it (wall, CPU)."""
    aggregation = GlobalAggregation()
    if all(c.data == "gaussian_grid" for c in cfg.federation.communities):
        evaluation = GaussianGridMetrics(cfg.metrics.eval_every, cfg.metrics.grid_samples_per_label,
                                         cfg.data.gaussian_std, plot_dir=run_dir / "plots")
    elif len(datamodule.spec.data_shape) == 1:
        log.warning("no evaluation metrics for vector data other than the Gaussian grid; training without them")
        evaluation = None
    else:
        evaluation = GenerationMetrics(partial(build_evaluator, cfg, datamodule,
                                               inception_progress=run_dir / "checkpoints" / INCEPTION_PROGRESS),
                                       cfg.metrics.eval_every, run_dir / "plots")
    checkpoint = RoundCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_rounds, started)
    # The bar on a terminal; one plain line per evaluation otherwise (a log file gets no carriage returns).
    bar = bool(cfg.trainer.progress_bar) and sys.stderr.isatty()
    loggers = build_loggers(cfg, run_dir, resume_state["iteration"] if resume_state else None)
    log_partition(loggers, datamodule, run_dir)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=1,
        logger=loggers,
        # order: aggregate, evaluate the new G, save, then the caller's
        callbacks=[aggregation, *([evaluation] if evaluation else []), checkpoint, *(extra_callbacks or []),
                   FederationProgressBar() if bar else PlainProgress()],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bar,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
    )
    return trainer, aggregation, evaluation, loggers


def summarise(cfg: DictConfig, model, run_dir: Path, started: tuple[float, float], aggregation, evaluation, trainer,
              loggers) -> Path:
    """``summary.json``; closes the loggers. ``started``: the wall clock and this process's CPU time when the
    run (or its last resumed segment) began; ``cpu_seconds`` is the CPU time of all the process's threads since
    (core-seconds: what the run cost on a shared machine, where the wall time depends on the load).
    ``run_wall_time_s`` and ``run_cpu_seconds`` count every segment up to the checkpoint the next one resumed
    from (callbacks/checkpoint.py): the run's cost as if never stopped; None after a resume from a checkpoint
    that predates them."""
    run_seconds = next(c for c in trainer.callbacks if isinstance(c, RoundCheckpoint)).run_seconds()
    summary = {
        "experiment": cfg.experiment,
        "seed": int(cfg.seed),
        "rounds": model.round,
        "iterations": model.iteration,
        "wall_time_s": round(time.time() - started[0], 2),
        "cpu_seconds": round(time.process_time() - started[1], 2),
        "run_wall_time_s": None if run_seconds is None else round(run_seconds[0], 2),
        "run_cpu_seconds": None if run_seconds is None else round(run_seconds[1], 2),
        "virtual_time": model.clock.tick,
        "bytes_device_edge": model.bytes["device_to_edge"] + model.bytes["edge_to_device"],
        "bytes_edge_cloud": model.bytes["edge_to_cloud"] + model.bytes["cloud_to_edge"],
        "bytes": dict(model.bytes),
        "faults": dict(model.counters),
        "metrics": evaluation.latest if evaluation else {},
        "eval_seconds": round(getattr(evaluation, "eval_seconds", 0.0), 2),
        "metrics_setup_seconds": round(getattr(evaluation, "setup_seconds", 0.0), 2),
        "classifier": getattr(getattr(evaluation, "evaluator", None), "classifier_record", None),
        "metrics_samples_per_scope": getattr(getattr(evaluation, "evaluator", None), "samples_per_scope", None),
        "inception": getattr(getattr(evaluation, "evaluator", None), "inception_record", None),
        "cloud_weights_last_round": aggregation.history[-1].get("cloud_weights") if aggregation.history else None,
        "devices_below_batch": {str(n): size for n, size in
                                getattr(trainer.datamodule, "devices_below_batch", {}).items()},  # they draw repeats
        "classes_without_images": getattr(trainer.datamodule, "classes_without_images", {}),
        "run_dir": str(run_dir),
        "resumed_from": cfg.resume,
        "trained": read_segments(run_dir),     # every start and resume: date, commit, hardware
        "finished": provenance()["date"],
    }
    summary["privacy"] = privacy_record(model)
    if getattr(model, "device_transport", None) is not None:
        summary["deployment"] = model.device_transport.summary()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(run_dir / "checkpoints" / INCEPTION_PROGRESS, ignore_errors=True)    # its numbers are in the summary
    for logger in trainer.loggers:
        logger.finalize("success")
    finish_wandb(loggers, exit_code=0)
    return run_dir


def finish_wandb(loggers: list, exit_code: int) -> None:
    """End this process's W&B run (Lightning leaves it open; a later run in the process would join it)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=exit_code)
