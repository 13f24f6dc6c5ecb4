"""Resuming a killed run: ``fedgen train resume=PATH`` or ``resume=latest``.

A run directory holds ``checkpoints/last.ckpt`` and the one before it, ``checkpoints/previous.ckpt``
(both written atomically). Resuming loads the newest readable one (a corrupt ``last.ckpt`` is reported
and ``previous.ckpt`` used), takes the run's configuration from the checkpoint, and lets the command
line change only what cannot alter the computation so far (``RESUMABLE_KEYS``); any other key that
differs from the checkpoint's is an error naming it. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from fedgen_pl.errors import InputError
from fedgen_pl.config import ConfigError, _merge, _parse_overrides, import_plugins, validate, with_defaults

log = logging.getLogger("fedgen")

# Keys a resumed run may change: the length of the run, and how it is logged, evaluated and saved.
RESUMABLE_KEYS = ("resume", "output_dir", "federation.global_rounds", "trainer.", "logger.", "metrics.", "plugins")
RUNS_ROOT = Path("runs")


def checkpoint_candidates(target: Path) -> list[Path]:
    """The checkpoints to try, newest first: a run directory's ``last`` then ``previous``; a file itself
    (then ``previous.ckpt`` beside it when the file is a ``last.ckpt``)."""
    if target.is_dir():
        folder = target / "checkpoints"
        return [folder / "last.ckpt", folder / "previous.ckpt"]
    if target.name == "last.ckpt":
        return [target, target.with_name("previous.ckpt")]
    return [target]


def latest_run(experiment: str, root: Path = RUNS_ROOT) -> Path:
    """The newest run directory of ``experiment`` under ``root`` that holds a checkpoint."""
    stem = Path(experiment).stem
    runs = [d for d in root.glob(f"{stem}-*") if d.is_dir()
            and any(p.is_file() for p in checkpoint_candidates(d))]
    if not runs:
        raise ConfigError(f"resume=latest: no run of experiment '{stem}' with a checkpoint under {root.resolve()}/ "
                          f"(looked for {stem}-*/checkpoints/last.ckpt); pass resume=RUN_DIR instead")
    newest = max(runs, key=lambda d: max(p.stat().st_mtime for p in checkpoint_candidates(d) if p.is_file()))
    log.info("resume=latest: %s", newest)
    return newest


def load_checkpoint(target: Path, command: str = "resume") -> tuple[Path, dict]:
    """The newest readable checkpoint for ``target`` (a run directory or a .ckpt file) and its contents: a
    damaged ``last.ckpt`` falls back to ``previous.ckpt`` with a log line (``resume``, ``eval``, ``sample``)."""
    problems = []
    for path in checkpoint_candidates(target):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            if "federation_state" not in checkpoint or "hyper_parameters" not in checkpoint:
                raise ValueError("not a fedgen-pl training checkpoint")
        except Exception as err:  # noqa: BLE001 - any unreadable file: say so and try the previous one
            detail = (str(err).splitlines() or [''])[0].split('. ')[0][:160]       # the first sentence is enough
            message = f"{path}: unreadable ({type(err).__name__}: {detail})"
            log.error("%s: %s; trying the previous checkpoint", command, message)
            problems.append(message)
            continue
        if problems:
            log.warning("%s: using %s (round %d) instead", command, path, checkpoint["federation_state"]["round"])
        return path, checkpoint
    raise InputError(f"no readable checkpoint ({'; '.join(problems)}); pass a run directory or a .ckpt file "
                     f"written by fedgen train", where=f"{command} {target}")


def run_dir_of(checkpoint_path: Path) -> Path:
    folder = checkpoint_path.parent
    return folder.parent if folder.name == "checkpoints" else folder


def changeable_on_resume(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def load_train_config(overrides: list[str]) -> DictConfig:
    """``fedgen train``'s configuration: the checkpoint's for ``resume=...``, else the layered one."""
    from fedgen_pl.config import load_config

    if _parse_overrides(overrides).get("resume") is not None:
        return resume_config(overrides)
    return load_config(overrides)


def resume_config(overrides: list[str]) -> DictConfig:
    """The configuration of the run to resume (from its checkpoint), with the command line's changes
    to ``RESUMABLE_KEYS``; ``resume`` is set to the checkpoint used and ``output_dir`` to its run."""
    cli = _parse_overrides(overrides)
    target = str(cli.resume)
    if target == "latest":
        from fedgen_pl.config import KEY

        default_experiment = KEY["experiment"].default
        run = latest_run(str(cli.get("experiment", default_experiment)))
    else:
        run = Path(target).expanduser()
        if not run.exists():
            raise ConfigError(f"resume: '{target}' does not exist; pass a run directory, a .ckpt file or latest")
    path, checkpoint = load_checkpoint(run)
    saved = OmegaConf.create(checkpoint["hyper_parameters"]["config"])
    cfg = with_defaults(saved)               # keys added since the run was made take their defaults
    for item in overrides:
        key = item.split("=", 1)[0]
        if changeable_on_resume(key):
            continue
        new, old = OmegaConf.select(cli, key), OmegaConf.select(saved, key, default="<absent>")
        if OmegaConf.is_config(new):
            new = OmegaConf.to_container(new)
        if OmegaConf.is_config(old):
            old = OmegaConf.to_container(old)
        if new != old:
            raise ConfigError(f"resume: key '{key}' is {old!r} in the checkpoint {path} but {new!r} on the command "
                              f"line; a resumed run keeps its configuration except "
                              f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUMABLE_KEYS)}. "
                              f"Start a new run to change it")
    allowed = OmegaConf.from_dotlist([item for item in overrides if changeable_on_resume(item.split("=", 1)[0])])
    cfg = _merge(cfg, allowed, "command line")
    target = OmegaConf.select(cfg, "privacy.target_epsilon")
    if target is not None and cfg.federation.global_rounds != saved.federation.global_rounds:
        # the noise was solved for the saved schedule: more messages at that noise would spend more than the target
        raise ConfigError(f"resume: {path} trains with the noise solved for privacy.target_epsilon={target} over "
                          f"{saved.federation.global_rounds} rounds; {cfg.federation.global_rounds} rounds would spend "
                          f"a different eps. Start a new run with the schedule you want", where="federation.global_rounds")
    cfg.resume = str(path)
    cfg.output_dir = str(run_dir_of(path))
    import_plugins(cfg.plugins)
    validate(cfg)
    done = checkpoint["federation_state"]["round"]
    if done >= cfg.federation.global_rounds:
        raise ConfigError(f"resume: {path} has already finished {done} of federation.global_rounds="
                          f"{cfg.federation.global_rounds} rounds; raise federation.global_rounds to train longer")
    log.info("resume: continuing %s from round %d, iteration %d", path, done, checkpoint["federation_state"]["iteration"])
    return cfg
