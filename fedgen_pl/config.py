"""Configuration: a typed OmegaConf schema, YAML layers and loud validation.

Layers, later wins: ``configs/default.yaml`` (every key, documented) -> the experiment's YAML ->
that experiment's ``schedules.<schedule>`` block -> ``key=value`` overrides from the command line.
The schema below fixes the types; ``default.yaml`` holds the values. Unknown keys, wrong types and
impossible values raise ``ConfigError`` naming the key, before anything is built.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedgen_pl.errors import ConfigError  # re-exported: ``from fedgen_pl.config import ConfigError``

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"




# -- schema (types only; values live in configs/default.yaml) -------------------------------------


@dataclass
class CommunityConfig:
    data: str = MISSING
    classes: Optional[List[int]] = None


@dataclass
class FederationConfig:
    communities: List[CommunityConfig] = MISSING
    devices_per_community: Any = MISSING
    local_iters: int = MISSING
    global_rounds: int = MISSING
    update: str = MISSING
    tau_edge: float = MISSING
    tau_cloud: float = MISSING
    cloud_lr: Any = MISSING
    aggregation: str = MISSING
    fedavg_via_edges: bool = MISSING
    fake_labels: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = MISSING
    gan_loss: str = MISSING
    conditional: bool = MISSING
    conditional_discriminator: bool = MISSING
    unheld_label_fakes: str = MISSING
    latent_dim: int = MISSING
    hidden_dim: int = MISSING
    g_channels: int = MISSING
    d_channels: int = MISSING
    d_features: int = MISSING
    g_norm: str = MISSING
    g_lr: float = MISSING
    d_lr: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    lambda_inv: float = MISSING
    lambda_spe: float = MISSING
    classifier_steps: int = MISSING
    classifier_lr: float = MISSING
    regularizer_batch: int = MISSING
    vae_average: str = MISSING
    domain_conditioning: str = MISSING
    film_output_gain_init: float = MISSING
    film_output_shift: bool = MISSING
    film_output_gain_scale: float = MISSING
    ema_decay: float = MISSING


@dataclass
class DataConfig:
    batch_size: int = MISSING
    root: Optional[str] = None
    download: bool = MISSING
    download_dir: str = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    label_space: str = MISSING
    partition: str = MISSING
    classes_per_device: int = MISSING
    shards_per_device: int = MISSING
    dirichlet_alpha: float = MISSING
    dirichlet_min_size: int = MISSING
    quantity_skew: float = MISSING
    gaussian_std: float = MISSING
    gaussian_samples_per_mode: int = MISSING


@dataclass
class ClockConfig:
    delay: str = MISSING
    delay_low: int = MISSING
    delay_high: int = MISSING
    delay_median: float = MISSING
    delay_sigma: float = MISSING
    straggler_fraction: float = MISSING
    straggler_slowdown: float = MISSING
    dropout: float = MISSING
    rejoin_ticks: int = MISSING
    timeout: int = MISSING
    lr_scale: bool = MISSING
    max_lr_scale: float = MISSING


@dataclass
class MetricsConfig:
    eval_every: int = MISSING
    grid_samples_per_label: int = MISSING
    num_samples: int = MISSING
    kid_subset_size: Any = MISSING
    kid_subsets: int = MISSING
    inception: Any = MISSING
    inception_scopes: str = MISSING
    inception_samples: Any = MISSING
    inception_reference: str = MISSING
    inception_precision: str = MISSING
    classifier_epochs: int = MISSING
    classifier_train_samples: Optional[int] = None
    cache_dir: str = MISSING


@dataclass
class TrainerConfig:
    accelerator: str = MISSING
    precision: str = MISSING
    log_every_n_iters: int = MISSING
    checkpoint_every_rounds: int = MISSING
    progress_bar: bool = MISSING
    nonfinite: str = MISSING
    member_execution: str = MISSING
    compile: str = MISSING


@dataclass
class DeployConfig:
    exchange_timeout_s: float = MISSING
    test_mode: bool = MISSING
    superlink_port: int = MISSING
    supernode_port: int = MISSING


@dataclass
class LoggerConfig:
    wandb: bool = MISSING
    wandb_mode: str = MISSING
    wandb_project: str = MISSING


@dataclass
class Config:
    experiment: str = MISSING
    seed: int = MISSING
    output_dir: Optional[str] = None
    resume: Optional[str] = None
    plugins: List[str] = field(default_factory=list)
    schedule: str = MISSING
    schedules: Dict[str, Any] = field(default_factory=dict)
    federation: FederationConfig = field(default_factory=FederationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)


CHOICES = {
    "schedule": ("quick", "full"),
    "federation.update": ("sync", "async"),
    "federation.fake_labels": ("device", "community"),
    "model.unheld_label_fakes": ("judge", "skip"),
    "model.arch": ("auto", "mlp", "dcgan"),
    "model.gan_loss": ("non_saturating", "saturating"),
    "model.g_norm": ("group", "none"),
    "model.vae_average": ("all", "decoder"),
    "model.domain_conditioning": ("concat", "film", "film_output"),
    "data.label_space": ("union", "shared"),
    "metrics.inception_scopes": ("global", "all"),
    "metrics.inception_reference": ("test", "train"),
    "metrics.inception_precision": ("32", "bf16"),
    "data.partition": ("iid", "shards", "sorted_shards", "dirichlet"),
    "clock.delay": ("constant", "uniform", "lognormal", "tiers"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "trainer.precision": ("32-true", "32", "16-mixed", "bf16-mixed"),
    "trainer.nonfinite": ("skip", "stop"),
    "trainer.member_execution": ("auto", "vmap", "loop"),
    "trainer.compile": ("none", "default", "reduce-overhead"),
    "logger.wandb_mode": ("offline", "online", "disabled"),
}


# -- loading ----------------------------------------------------------------------------------


def experiment_path(name: str) -> Path:
    """``configs/experiment/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise ConfigError(f"experiment: file '{name}' does not exist")
        return as_path
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
        raise ConfigError(f"experiment: unknown experiment '{name}'; available: {', '.join(known)} "
                          f"(or pass a path to your own .yaml)")
    return path


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError("not of the form key=value (e.g. seed=3 or federation.local_iters=20)",
                              where=f"override '{item}'")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse them: {str(err).splitlines()[0]}", where=f"overrides {overrides}") from None


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        keys.append(full)
        child = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(child, DictConfig) and full != "schedules":
            keys += _all_keys(child, full + ".")
    return keys


def _merge(base: DictConfig, layer, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        message = str(err).splitlines()[0]
        if "not in" in message and "Did you mean" not in message:
            close = difflib.get_close_matches(key, _all_keys(base), n=1)
            if close:
                message += f" Did you mean '{close[0]}'?"
        raise ConfigError(f"{message} (in {source})", where=key or source) from None


def with_defaults(saved) -> DictConfig:
    """A saved run's configuration (a checkpoint's, a config.yaml) with today's defaults under it: keys added
    since the run was made take their default, which keeps the run's behaviour."""
    cfg = _merge(OmegaConf.structured(Config), load_yaml(CONFIG_DIR / "default.yaml"), "configs/default.yaml")
    saved = OmegaConf.create(saved) if not isinstance(saved, DictConfig) else saved
    return _merge(cfg, saved, "the run's saved configuration")


def experiment_layers(path: Path, seen: tuple[str, ...] = ()) -> DictConfig:
    """An experiment file, on top of the experiment it ``extends`` (if any; chains allowed, cycles refused)."""
    node = load_yaml(path)
    base = node.pop("extends", None)
    if base is None:
        return node
    base_path = experiment_path(str(base))
    if str(base_path.resolve()) in seen + (str(Path(path).resolve()),):
        raise ConfigError(f"extends '{base}' makes a cycle of experiments", where=str(path))
    return OmegaConf.merge(experiment_layers(base_path, seen + (str(Path(path).resolve()),)), node)


def load_yaml(path: Path) -> DictConfig:
    """A YAML file as a config; a syntax error (a tab, an unclosed bracket) is a one-line ConfigError."""
    import yaml

    try:
        node = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}; fix the file (indent with spaces, not tabs)",
                          where=where) from None
    if not isinstance(node, DictConfig):
        raise ConfigError("must hold a mapping of keys (key: value), not a list or a value", where=str(path))
    return node


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Build and validate the configuration for ``overrides`` (a list of ``key=value`` strings). Names that
    registries resolve (model, aggregation rule, datasets) are checked when resolved
    (``fedgen_pl.train.resolve_names``); a run to resume is loaded by ``fedgen_pl.resume.resume_config``."""
    cli = _parse_overrides(list(overrides or []))
    if cli.get("resume") is not None:
        raise ConfigError("a run to resume is loaded from its checkpoint: use fedgen_pl.resume.resume_config "
                          "(fedgen train resume=RUN does)", where="resume")
    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, load_yaml(CONFIG_DIR / "default.yaml"), "configs/default.yaml")
    experiment = str(cli.get("experiment", cfg.experiment))
    path = experiment_path(experiment)
    cfg = _merge(cfg, experiment_layers(path), str(path))
    schedule = str(cli.get("schedule", cfg.schedule))
    if schedule not in CHOICES["schedule"]:
        raise ConfigError(f"schedule: '{schedule}' is not allowed; choose one of {CHOICES['schedule']}")
    if schedule in cfg.schedules:
        cfg = _merge(cfg, cfg.schedules[schedule], f"{path} schedules.{schedule}")
    cfg = _merge(cfg, cli, "command line")
    cfg.experiment = experiment
    # a plugin file is recorded by absolute path, so eval, sample and resume find it from any directory
    cfg.plugins = [str(Path(p).expanduser().resolve()) if str(p).endswith(".py") else p for p in cfg.plugins]
    import_plugins(cfg.plugins)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"keys without a value: {', '.join(missing)} (set them in the experiment or on the "
                          f"command line)")
    validate(cfg)
    cfg.federation.cloud_lr = cloud_lr(cfg)      # `auto` resolved once, here: K
    return cfg


def import_plugins(plugins) -> None:
    """Import user modules (a dotted name or a path to a .py file) that register datasets or
    aggregation rules, before the config is validated."""
    import importlib
    import importlib.util
    import sys

    for i, plugin in enumerate(plugins):
        path = Path(plugin)
        try:
            if path.suffix == ".py":
                if not path.is_file():
                    raise ConfigError(f"plugins[{i}]: file '{plugin}' does not exist")
                name = f"fedgen_plugin_{path.stem}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - report any import failure with the plugin's name
            raise ConfigError(f"plugins[{i}]: importing '{plugin}' failed: {type(err).__name__}: {err}") from None


# -- validation -------------------------------------------------------------------------------


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def devices_per_community(cfg: DictConfig) -> list[int]:
    """``federation.devices_per_community`` as one count per community."""
    value = cfg.federation.devices_per_community
    k = len(cfg.federation.communities)
    if isinstance(value, (list, ListConfig)):
        return [int(v) for v in value]
    return [int(value)] * k


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested plain dict as ``{"a.b.c": value}`` (what tables and reports compare across runs)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def kid_subset_size(cfg: DictConfig) -> int:
    value = cfg.metrics.kid_subset_size
    return min(1000, int(cfg.metrics.num_samples)) if value == "auto" else int(value)


def cloud_lr(cfg: DictConfig) -> float:
    value = cfg.federation.cloud_lr
    return float(len(cfg.federation.communities)) if value == "auto" else float(value)


def validate(cfg: DictConfig) -> None:
    _require(isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**32, "seed",
             f"must be an integer in 0..{2**32 - 1} (it seeds numpy and torch), got {cfg.seed}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        _require(value in allowed, key, f"'{value}' is not allowed; choose one of {', '.join(allowed)}")
    for name in cfg.schedules:
        _require(name in CHOICES["schedule"], f"schedules.{name}",
                 f"unknown schedule; experiments may define {CHOICES['schedule']}")

    _require(cfg.deploy.exchange_timeout_s > 0, "deploy.exchange_timeout_s",
             f"must be > 0 seconds, got {cfg.deploy.exchange_timeout_s}")
    for key in ("deploy.superlink_port", "deploy.supernode_port"):
        _require(1024 <= OmegaConf.select(cfg, key) < 65536, key,
                 f"must be a port in 1024..65535, got {OmegaConf.select(cfg, key)}")

    fed = cfg.federation
    k = len(fed.communities)
    _require(k >= 1, "federation.communities", "needs at least one community, e.g. [{data: mnist}]")
    dpc = fed.devices_per_community
    if isinstance(dpc, (list, ListConfig)):
        _require(len(dpc) == k, "federation.devices_per_community",
                 f"has {len(dpc)} entries but federation.communities has {k}; give one count per community "
                 f"or a single int")
        counts = list(dpc)
    else:
        counts = [dpc]
    for count in counts:
        _require(isinstance(count, int) and not isinstance(count, bool) and count >= 1,
                 "federation.devices_per_community", f"must be an int >= 1 or a list of them, got {count!r}")
    _require(fed.local_iters >= 1, "federation.local_iters", f"must be >= 1, got {fed.local_iters}")
    _require(fed.global_rounds >= 1, "federation.global_rounds", f"must be >= 1, got {fed.global_rounds}")
    for key in ("tau_edge", "tau_cloud"):
        _require(math.isfinite(fed[key]), f"federation.{key}", f"must be a finite number, got {fed[key]}")
    lr = fed.cloud_lr
    if isinstance(lr, str):
        _require(lr == "auto", "federation.cloud_lr", f"must be 'auto' or a number > 0, got '{lr}'")
    else:
        _require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
                 "federation.cloud_lr", f"must be 'auto' or a number > 0, got {lr!r}")
    if cfg.data.root:
        root = Path(str(cfg.data.root)).expanduser()
        _require(root.is_dir(), "data.root", f"directory '{root}' does not exist; point data.root at the directory "
                                             f"that holds your datasets (README, 'Your own dataset')")
    for i, community in enumerate(fed.communities):
        if community.classes is not None:
            _require(len(community.classes) >= 1, f"federation.communities[{i}].classes",
                     "must list at least one class (or be omitted for all classes)")
            _require(len(set(community.classes)) == len(community.classes),
                     f"federation.communities[{i}].classes", f"has duplicates: {list(community.classes)}")

    m = cfg.model
    for key in ("lambda_inv", "lambda_spe"):
        _require(m[key] >= 0, f"model.{key}", f"must be >= 0 (0 switches the term off), got {m[key]}")
    _require(m.classifier_steps >= 0, "model.classifier_steps", f"must be >= 0, got {m.classifier_steps}")
    _require(m.classifier_lr > 0, "model.classifier_lr", f"must be > 0, got {m.classifier_lr}")
    _require(m.film_output_gain_init == 1.0 or m.domain_conditioning in ("film", "film_output"),
             "model.film_output_gain_init", f"only applies to domain_conditioning=film or film_output, "
             f"got {m.film_output_gain_init} with {m.domain_conditioning}")
    _require(m.film_output_shift or m.domain_conditioning in ("film", "film_output"), "model.film_output_shift",
             f"only applies to domain_conditioning=film or film_output, got {m.domain_conditioning}")
    _require(m.film_output_gain_scale > 0 and (m.film_output_gain_scale == 1.0 or m.domain_conditioning in (
        "film", "film_output")), "model.film_output_gain_scale",
             f"must be > 0 and only applies to domain_conditioning=film or film_output, got "
             f"{m.film_output_gain_scale} with {m.domain_conditioning}")
    _require(m.regularizer_batch >= 1, "model.regularizer_batch", f"must be >= 1, got {m.regularizer_batch}")
    for key in ("latent_dim", "hidden_dim", "g_channels", "d_channels"):
        _require(m[key] >= 1, f"model.{key}", f"must be >= 1, got {m[key]}")
    for key in ("g_lr", "d_lr"):
        _require(m[key] > 0, f"model.{key}", f"must be > 0, got {m[key]}")
    _require(m.d_features >= 0, "model.d_features", f"must be >= 0 (0 = no hidden layer), got {m.d_features}")
    for key in ("beta1", "beta2"):
        _require(0 <= m[key] < 1, f"model.{key}", f"must be in [0, 1), got {m[key]}")
    _require(0 <= m.ema_decay < 1, "model.ema_decay", f"must be in [0, 1) (0 = no EMA), got {m.ema_decay}")

    d = cfg.data
    _require(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _require(d.image_size >= 8, "data.image_size", f"must be >= 8, got {d.image_size}")
    _require(d.channels in (1, 3), "data.channels", f"must be 1 or 3, got {d.channels}")
    _require(d.classes_per_device >= 1, "data.classes_per_device", f"must be >= 1, got {d.classes_per_device}")
    _require(d.shards_per_device >= 1, "data.shards_per_device", f"must be >= 1, got {d.shards_per_device}")
    _require(d.dirichlet_alpha > 0, "data.dirichlet_alpha", f"must be > 0, got {d.dirichlet_alpha}")
    _require(d.dirichlet_min_size >= 1, "data.dirichlet_min_size", f"must be >= 1, got {d.dirichlet_min_size}")
    _require(d.quantity_skew >= 0, "data.quantity_skew", f"must be >= 0 (0 = equal sizes), got {d.quantity_skew}")
    _require(d.gaussian_std > 0, "data.gaussian_std", f"must be > 0, got {d.gaussian_std}")
    _require(d.gaussian_samples_per_mode >= 1, "data.gaussian_samples_per_mode",
             f"must be >= 1, got {d.gaussian_samples_per_mode}")
    _require(cfg.metrics.eval_every >= 1, "metrics.eval_every", f"must be >= 1, got {cfg.metrics.eval_every}")
    c = cfg.clock
    _require(c.delay_low >= 1, "clock.delay_low", f"must be >= 1 tick, got {c.delay_low}")
    _require(c.delay_high >= c.delay_low, "clock.delay_high", f"must be >= clock.delay_low ({c.delay_low}), got {c.delay_high}")
    _require(c.delay_median > 0 and c.delay_sigma >= 0, "clock.delay_median",
             f"lognormal needs delay_median > 0 and delay_sigma >= 0, got {c.delay_median}, {c.delay_sigma}")
    _require(0 <= c.straggler_fraction <= 1, "clock.straggler_fraction", f"must be in [0, 1], got {c.straggler_fraction}")
    _require(c.straggler_slowdown >= 1, "clock.straggler_slowdown", f"must be >= 1, got {c.straggler_slowdown}")
    _require(0 <= c.dropout < 1, "clock.dropout", f"must be in [0, 1), got {c.dropout}")
    _require(c.rejoin_ticks >= 1, "clock.rejoin_ticks", f"must be >= 1, got {c.rejoin_ticks}")
    _require(c.timeout >= 1, "clock.timeout", f"must be >= 1 tick, got {c.timeout}")
    _require(c.max_lr_scale >= 1, "clock.max_lr_scale", f"must be >= 1, got {c.max_lr_scale}")
    mc = cfg.metrics
    _require(mc.inception in ("auto", True, False), "metrics.inception", f"must be auto, true or false, got {mc.inception!r}")
    _require(mc.num_samples >= 10, "metrics.num_samples", f"must be >= 10, got {mc.num_samples}")
    _require(mc.kid_subset_size == "auto" or (isinstance(mc.kid_subset_size, int) and not isinstance(
        mc.kid_subset_size, bool) and 1 <= mc.kid_subset_size <= mc.num_samples), "metrics.kid_subset_size",
             f"must be auto (= min(1000, metrics.num_samples)) or an int in 1..metrics.num_samples "
             f"({mc.num_samples}), got {mc.kid_subset_size!r}")
    _require(mc.inception_samples == "num_samples" or (isinstance(mc.inception_samples, int) and not isinstance(
        mc.inception_samples, bool) and mc.inception_samples >= 10), "metrics.inception_samples",
             f"must be num_samples or an int >= 10, got {mc.inception_samples!r}")
    _require(mc.kid_subsets >= 1, "metrics.kid_subsets", f"must be >= 1, got {mc.kid_subsets}")
    _require(mc.classifier_epochs >= 1, "metrics.classifier_epochs", f"must be >= 1, got {mc.classifier_epochs}")
    _require(mc.classifier_train_samples is None or mc.classifier_train_samples >= 100,
             "metrics.classifier_train_samples", f"must be null (all) or >= 100, got {mc.classifier_train_samples}")
    _require(cfg.metrics.grid_samples_per_label >= 1, "metrics.grid_samples_per_label",
             f"must be >= 1, got {cfg.metrics.grid_samples_per_label}")
    t = cfg.trainer
    _require(t.log_every_n_iters >= 1, "trainer.log_every_n_iters", f"must be >= 1, got {t.log_every_n_iters}")
    _require(t.checkpoint_every_rounds >= 1, "trainer.checkpoint_every_rounds",
             f"must be >= 1, got {t.checkpoint_every_rounds}")
