"""``fedgen eval`` and ``fedgen sample``: metrics and samples of a saved run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fedgen_pl.config import ConfigError, _merge, _parse_overrides, import_plugins, validate
from fedgen_pl.errors import InputError, check_writable_dir
from fedgen_pl.models import model_class

log = logging.getLogger("fedgen")


def load_model(path: str | Path, device: torch.device | None = None, command: str = "eval"):
    """The model of a checkpoint (a run directory: its ``last.ckpt``, or ``previous.ckpt`` when that one is
    damaged, as ``resume`` does) and the checkpoint's path."""
    from fedgen_pl.resume import load_checkpoint

    if not Path(path).exists():
        raise InputError("does not exist; pass a .ckpt file or a run directory holding checkpoints/last.ckpt",
                         where=str(path))
    path, checkpoint = load_checkpoint(Path(path), command)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hparams = checkpoint["hyper_parameters"]
    import_plugins(hparams["config"].get("plugins") or [])     # the run's datasets and rules, as it was trained
    model = model_class(hparams["config"]["model"]["name"]).load_from_checkpoint(path, map_location=device,
                                                                               weights_only=True)
    return model.to(device).eval(), path


def evaluate_checkpoint(path, overrides: list[str] | None = None) -> tuple[dict, Path]:
    """Every metric of the checkpoint's global generator; writes ``metrics.json`` beside it."""
    from datamodules import FederatedDataModule
    from fedgen_pl.metrics.evaluator import build_evaluator

    model, path = load_model(path)
    check_writable_dir(path.parent, f"eval {path.parent}")       # metrics.json goes beside the checkpoint
    cfg = model.cfg.copy()           # the run's configuration, today's defaults under it
    warn_if_config_differs(path, cfg)
    for item in overrides or []:
        key = item.split("=", 1)[0]
        if not key.startswith("metrics."):
            raise ConfigError(f"fedgen eval: only metrics.* can be overridden, got '{key}'")
    cfg = _merge(cfg, _parse_overrides(list(overrides or [])), "command line")
    validate(cfg)
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    if len(datamodule.spec.data_shape) == 1:
        from callbacks.grid_metrics import GaussianGridMetrics

        callback = GaussianGridMetrics(1, cfg.metrics.grid_samples_per_label, cfg.data.gaussian_std)
        metrics = {f"global/{k}": v for k, v in callback.evaluate(model)[0].items()}
    else:
        evaluator = build_evaluator(cfg, datamodule, model.device)
        metrics = evaluator.evaluate_model(model)
        metrics["classifier_test_accuracy"] = evaluator.classifier_record["test_accuracy"]
    metrics = {"round": model.round, "iteration": model.iteration, **metrics}
    out = path.parent / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2))
    return metrics, out


def warn_if_config_differs(checkpoint: Path, cfg) -> None:
    """A run folder's ``config.yaml`` that disagrees with its checkpoint (edited, or copied from another run):
    say so once; the checkpoint's configuration is the one used."""
    from fedgen_pl.config import flatten, with_defaults
    from fedgen_pl.resume import changeable_on_resume, run_dir_of

    saved = run_dir_of(checkpoint) / "config.yaml"
    if not saved.is_file():
        return
    try:
        written = flatten(OmegaConf.to_container(with_defaults(OmegaConf.load(saved)), resolve=True))
    except Exception as err:  # noqa: BLE001 - a damaged config.yaml is only worth a warning here
        log.warning("eval: %s is unreadable (%s); using the checkpoint's configuration", saved, type(err).__name__)
        return
    used = flatten(OmegaConf.to_container(cfg, resolve=True))
    differ = sorted(k for k in set(written) | set(used)       # keys a resumed run may change legitimately differ
                    if written.get(k) != used.get(k) and not changeable_on_resume(k))
    if differ:
        log.warning("eval: %s differs from the checkpoint's configuration at %s; using the checkpoint's",
                    saved, ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else ""))


@torch.no_grad()
def sample_checkpoint(path, n: int, out: str | None = None, seed: int = 0, ema: bool = False) -> list[Path]:
    """``n`` samples, labels cycling through the label space: ``<stem>.npz`` (x, y, label_names) and
    ``<stem>.png``; with ``ema``, of the EMA of the global model (default stem ``samples_<n>_ema``)."""
    if n < 1:
        raise ConfigError(f"must be >= 1, got {n}; ask for at least one sample", where="--n")
    if out is not None:
        check_writable_dir(Path(out).expanduser().parent, "--out")
    model, path = load_model(path, command="sample")
    if out is None:
        check_writable_dir(path.parent, f"sample {path.parent}")
    if not ema:
        return _sample_model(model, path, n, out, seed)
    if not model.has_ema:
        raise InputError("this run has no EMA of its global model (trained with model.ema_decay=0); sample it "
                         "without --ema", where=str(path))
    with model.ema_weights():
        return _sample_model(model, path, n, out or str(path.parent / f"samples_{n}_ema"), seed)


def _sample_model(model, path: Path, n: int, out: str | None, seed: int) -> list[Path]:
    from fedgen_pl.plots import image_grid, scatter_grid

    spec = model.spec
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if model.recipe.conditioning == "domain":     # domain-conditional: cycle through the domains
        labels = torch.arange(n, device=model.device) % spec.num_communities
        samples = model.sample_global(labels, generator, domains=labels).float().cpu()
        names = spec.community_names
    else:
        labels = torch.arange(n, device=model.device) % spec.num_labels
        samples = model.sample_global(labels, generator).float().cpu()
        names = spec.label_names
    stem = Path(out) if out else path.parent / f"samples_{n}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 4:
        stored = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    else:
        stored = samples.numpy()
    npz = stem.with_suffix(".npz")
    np.savez(npz, x=stored, y=labels.cpu().numpy(), label_names=np.array(names))
    png = stem.with_suffix(".png")
    if samples.dim() == 4:
        order = torch.argsort(labels.cpu(), stable=True)[:400]      # rows grouped by label
        image_grid(samples[order], png, nrow=min(10, n), title=f"{n} samples, round {model.round}")
    else:
        from callbacks.grid_metrics import GaussianGridMetrics

        scatter_grid(samples, labels.cpu(), GaussianGridMetrics.centres(model), model.cfg.data.gaussian_std, png)
    return [npz, png]
