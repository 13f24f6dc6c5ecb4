"""Configuration: a typed OmegaConf schema, YAML layers and loud validation.

Layers, later wins: the defaults -> the experiment's YAML -> that experiment's ``schedules.<schedule>``
block -> ``key=value`` overrides from the command line. Every key is declared once, in ``KEYS`` below: type,
default, one-line doc, allowed values, range; ``configs/default.yaml`` is generated from it. Unknown keys,
wrong types and impossible values raise ``ConfigError`` naming the key, before anything is built.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedgen_pl.errors import ConfigError  # re-exported: ``from fedgen_pl.config import ConfigError``

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"




# -- the keys: one place each -----------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, one-line doc, allowed values and range. The schema, the
    defaults, ``configs/default.yaml`` (``fedgen config --defaults`` writes it; a test compares), ``fedgen
    config --keys`` and the range errors all come from here. Rules that tie keys together: ``validate``."""

    name: str
    type: Any
    default: Any
    doc: str
    choices: tuple = ()
    ge: float | None = None      # value >= ge
    gt: float | None = None      # value > gt
    le: float | None = None      # value <= le
    lt: float | None = None      # value < lt

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed (None when it is)."""
        if self.choices and value not in self.choices:
            return f"'{value}' is not allowed; choose one of {', '.join(map(_yaml_value, self.choices))}"
        low = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        high = (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if low and high:
            return None
        lower = f">= {self.ge}" if self.ge is not None else f"> {self.gt}" if self.gt is not None else None
        upper = f"<= {self.le}" if self.le is not None else f"< {self.lt}" if self.lt is not None else None
        if lower and upper:
            left = f"[{self.ge}" if self.ge is not None else f"({self.gt}"
            right = f"{self.le}]" if self.le is not None else f"{self.lt})"
            return f"must be in {left}, {right}, got {value}"
        return f"must be {lower or upper}, got {value}"


@dataclass
class CommunityConfig:
    data: str = MISSING
    classes: Optional[List[int]] = None


KEYS: list[Key] = [
    Key('experiment', str, 'mnist_fmnist_noniid',
        'configs/experiment/<name>.yaml, or a path to your own YAML'),
    Key('seed', int, 0, 'seeds data generation, partitions, initialisation and sampling', ge=0, lt=2**32),
    Key('output_dir', Optional[str], None, 'run directory; null = runs/<experiment>-<YYYYmmdd-HHMMSS>'),
    Key('resume', Optional[str], None,
        'continue a killed run: a run directory, a .ckpt file, or latest (newest run of this experiment)'),
    Key('plugins', List[str], [],
        'modules or .py files to import first (they register datasets, aggregation rules)'),
    Key('schedule', str, 'quick',
        'quick (CPU-sized) | full (the reproduction tables): picks schedules.<name>',
        choices=('quick', 'full')),
    Key('schedules', Dict[str, Any], {},
        'per-schedule overrides, set by experiments: {quick: {...}, full: {...}}'),
    Key('federation.communities', List[CommunityConfig], [],
        'one entry per community, {data: NAME, classes: [..] optional}; K = length'),
    Key('federation.devices_per_community', Any, 5, 'devices per community: one int, or a list of K ints'),
    Key('federation.local_iters', int, 5, 'I_lo: local iterations of every community per global round', ge=1),
    Key('federation.global_rounds', int, 200, 'I_gl: global rounds (cloud aggregations)', ge=1),
    Key('federation.update', str, 'sync', 'sync (Eq. 4) | async (Eq. 5)', choices=('sync', 'async')),
    Key('federation.tau_edge', float, 1.0,
        'edge weights softmax_j(tau_edge * L_kj); 1 = Eq. 4 as printed, 0 = plain mean'),
    Key('federation.tau_cloud', float, 1.0, 'cloud weights softmax_k(tau_cloud * L*_k); 0 = plain mean'),
    Key('federation.cloud_lr', Any, 'auto',
        'G += cloud_lr * sum_k a_k (G_k - G); auto = K, 1 = Eq. 1 as printed'),
    Key('federation.aggregation', str, 'loss_softmax',
        'registered aggregation rule: loss_softmax (Eq. 1) | fedavg | your own'),
    Key('federation.fedavg_via_edges', bool, False,
        'fed_gan / fed_cgan / fed_vae: average through the edge tier (else devices -> cloud); other models '
        'refuse it'),
    Key('federation.fake_labels', str, 'device',
        "labels of a device's fakes: device (its own label histogram; the edge knows it) | community "
        "(uniform over the community's labels; centralized: over all labels)",
        choices=('device', 'community')),
    Key('model.name', str, 'fedgen_fr',
        'fedgen_fr | fedgen_lr (label-related) | centralized_gan | md_gan | fed_gan | reg_cgan | '
        'fed_cgan | fed_vae'),
    Key('model.arch', str, 'auto',
        'auto (mlp for vectors, dcgan for images) | mlp | dcgan', choices=('auto', 'mlp', 'dcgan')),
    Key('model.gan_loss', str, 'non_saturating',
        'generator objective: non_saturating (-log D(G(z))) | saturating (log(1 - D(G(z))))',
        choices=('non_saturating', 'saturating')),
    Key('model.non_saturating_warmup', int, 0,
        'with gan_loss=saturating: the first this many rounds train with the non-saturating loss, whose '
        'gradient does not vanish while D rejects every fake (Goodfellow et al. 2014); 0 = off', ge=0),
    Key('model.instance_noise', float, 0.0,
        'std of Gaussian noise added to every sample a device discriminator sees, real and fake, in '
        'training and in the feedback (GANs; 0 = off; images are scaled to [-1, 1])', ge=0),
    Key('model.r1_gamma', float, 0.0,
        "weight gamma of the R1 gradient penalty (gamma/2) E||grad_x D(x)||^2 on each device discriminator's "
        'real batch (GANs; 0 = off)', ge=0),
    Key('model.conditional', bool, True,
        'class-conditional generators and discriminators (docs/method.md §6)'),
    Key('model.conditional_discriminator', bool, True,
        'false: device discriminators do not see labels (the generator stays conditional)'),
    Key('model.unheld_label_fakes', str, 'judge',
        'fakes of labels a discriminator holds no data for: judge them | skip them (out of its loss '
        'and its feedback)', choices=('judge', 'skip')),
    Key('model.latent_dim', int, 8, 'size of z', ge=1),
    Key('model.hidden_dim', int, 128, 'width of the MLP networks (Gaussian grid)', ge=1),
    Key('model.g_channels', int, 32,
        'DCGAN generator width (its first conv has 2x this many channels)', ge=1),
    Key('model.d_channels', int, 32,
        'DCGAN discriminator width (its second conv has 2x this many channels)', ge=1),
    Key('model.d_features', int, 0,
        'DCGAN discriminator hidden layer after the convs (0 = none, plain DCGAN)', ge=0),
    Key('model.g_norm', str, 'group',
        'DCGAN generator normalisation: group (per-sample GroupNorm) | none', choices=('group', 'none')),
    Key('model.g_lr', float, 0.001, 'Adam learning rate of the community generators', gt=0),
    Key('model.d_lr', float, 0.001, 'Adam learning rate of the device discriminators', gt=0),
    Key('model.beta1', float, 0.5, 'Adam beta1 (generators and discriminators)', ge=0, lt=1),
    Key('model.beta2', float, 0.999, 'Adam beta2 (generators and discriminators)', ge=0, lt=1),
    Key('model.lambda_inv', float, 0.1,
        'fedgen_lr: weight of the domain-invariant loss L_inv (0 = off)', ge=0),
    Key('model.lambda_spe', float, 0.1,
        'fedgen_lr: weight of the domain-specific loss L_spe (0 = off)', ge=0),
    Key('model.classifier_steps', int, 5,
        "fedgen_lr: steps of the cloud's domain classifier C per round", ge=0),
    Key('model.classifier_lr', float, 0.001, 'fedgen_lr: Adam learning rate of C', gt=0),
    Key('model.regularizer_batch', int, 16,
        "fedgen_lr: latent vectors per domain for L_inv, L_spe and C's training", ge=1),
    Key('model.domain_conditioning', str, 'concat',
        'fedgen_lr, reg_cgan, fed_cgan: how G gets the domain code: concat (RegCGAN) | film (per-'
        'domain gain and shift per layer) | film_output (ablation: output layer only)',
        choices=('concat', 'film', 'film_output')),
    Key('model.film_output_gain_init', float, 1.0,
        'film, film_output: initial per-domain gain of the output layer; 0 lets each domain pick its '
        'sign (1 = identity)'),
    Key('model.film_output_gain_scale', float, 1.0,
        'film, film_output: the output gain is this x its parameter, so under Adam it learns this '
        'many times faster', gt=0),
    Key('model.film_output_shift', bool, True,
        'film, film_output: a per-domain shift at the output layer (false: gain only, no per-domain '
        'constant image)'),
    Key('model.vae_average', str, 'all',
        'fed_vae: average the whole VAE (all), the decoder only (encoders stay private) or nothing (none: '
        'local-only VAEs, the no-federation floor); other models refuse anything but all',
        choices=('all', 'decoder', 'none')),
    Key('model.ema_decay', float, 0.99,
        'EMA of the global model over rounds (warm-up: min(this, r / (r + 9))), evaluated and sampled'
        ' beside it (ema/global/..., plots/ema/); 0 = off', ge=0, lt=1),
    Key('data.batch_size', int, 64, 'real and generated samples per device per local iteration', ge=1),
    Key('data.root', Optional[str], None,
        'your data directory: torchvision layout (MNIST/raw/...) or <name>/ with idx or npz files'),
    Key('data.download', bool, True,
        'let torchvision download a dataset when no local source has it (needs a network)'),
    Key('data.download_dir', str, '~/.cache/fedgen-pl/data',
        'where torchvision downloads go when data.root is not set'),
    Key('data.image_size', int, 28, 'images are converted to image_size x image_size ...', ge=8),
    Key('data.channels', int, 1, '... with this many channels (1 or 3)', choices=(1, 3)),
    Key('data.label_space', str, 'union',
        'union: labels are (dataset, class) pairs (20 for MNIST + FashionMNIST); shared: class index',
        choices=('union', 'shared')),
    Key('data.partition', str, 'iid',
        'devices within a community: iid | shards (label skew) | sorted_shards (McMahan et al.) | '
        'dirichlet (label skew)', choices=('iid', 'shards', 'sorted_shards', 'dirichlet')),
    Key('data.classes_per_device', int, 2, 'shards: classes held by every device', ge=1),
    Key('data.shards_per_device', int, 4,
        "sorted_shards: label-sorted shards of equal size per device (McMahan et al.; PRISM's "
        'non-i.i.d. split)', ge=1),
    Key('data.dirichlet_alpha', float, 0.5, 'dirichlet: concentration; smaller = more skew', gt=0),
    Key('data.dirichlet_min_size', int, 10,
        'dirichlet: redraw until every device holds at least this many samples', ge=1),
    Key('data.quantity_skew', float, 0.0,
        'device sizes ~ lognormal(0, quantity_skew); shards: only where devices share a class; 0 = '
        'equal', ge=0),
    Key('data.gaussian_std', float, 0.2, 'Gaussian grid: standard deviation of every mode', gt=0),
    Key('data.gaussian_samples_per_mode', int, 5000,
        'Gaussian grid: training points drawn per mode (split over its devices)', ge=1),
    Key('clock.delay', str, 'constant',
        'per-dispatch delay: constant (delay_low) | uniform | lognormal | tiers',
        choices=('constant', 'uniform', 'lognormal', 'tiers')),
    Key('clock.delay_low', int, 10, 'constant: the delay; uniform and tiers: the smallest delay', ge=1),
    Key('clock.delay_high', int, 60, 'uniform and tiers: the largest delay'),
    Key('clock.delay_median', float, 30.0, 'lognormal: median delay', gt=0),
    Key('clock.delay_sigma', float, 0.5, 'lognormal: sigma of log-delay', ge=0),
    Key('clock.straggler_fraction', float, 0.2, 'tiers: share of devices that are stragglers', ge=0, le=1),
    Key('clock.straggler_slowdown', float, 4.0,
        "tiers: a straggler's speed factor (its delays are this many times longer)", ge=1),
    Key('clock.dropout', float, 0.0,
        'probability that a dispatch is lost; the device goes offline ...', ge=0, lt=1),
    Key('clock.rejoin_ticks', int, 200, '... and rejoins this many ticks later', ge=1),
    Key('clock.timeout', int, 300,
        'sync: an edge stops waiting for missing devices this many ticks after dispatch', ge=1),
    Key('clock.lr_scale', bool, False,
        "async: scale D_kj's learning rate by exp(staleness of its last feedback)"),
    Key('clock.max_lr_scale', float, 10.0, 'async: cap of that scale', ge=1),
    Key('metrics.eval_every', int, 10,
        'evaluate the global generator every this many rounds (and at the end)', ge=1),
    Key('metrics.grid_samples_per_label', int, 300,
        'Gaussian grid: samples per label for modes_covered etc. (9 x 300 = 2700)', ge=1),
    Key('metrics.num_samples', int, 2000,
        'images: real and generated samples per scope (global, each community)', ge=10),
    Key('metrics.kid_subset_size', Any, 'auto',
        'images: KID subset size: auto = min(1000, num_samples), or an int <= num_samples'),
    Key('metrics.kid_subsets', int, 20, 'images: KID is the mean over this many random subsets', ge=1),
    Key('metrics.inception', Any, 'auto',
        'images: fid_inception with the TF-FID InceptionV3: auto (on with a GPU) | true | false',
        choices=('auto', True, False)),
    Key('metrics.inception_scopes', str, 'global',
        'images: fid_inception for the global scope only | all scopes', choices=('global', 'all')),
    Key('metrics.inception_samples', Any, 'num_samples',
        'images: generated samples for fid_inception / kid_inception (10000 for the literature tables)'),
    Key('metrics.inception_reference', str, 'test',
        'images: the real images of the Inception statistics: test split (as PRISM) | train split; '
        'cached', choices=('test', 'train')),
    Key('metrics.inception_precision', str, 'auto',
        'images: Inception (channels-last) at auto (bf16 on a CPU where bf16 pays, as trainer.precision; else 32) '
        '| bf16 (autocast; FID within 1% of fp32: benchmarks/RESULTS.md) | 32', choices=('auto', '32', 'bf16')),
    Key('metrics.iw_samples', int, 100,
        'VAEs: importance samples of global/iw_negative_elbo, computed at the last evaluation (0 = off)', ge=0),
    Key('metrics.anomaly_data', Optional[str], None,
        'VAEs: anomaly detection at the last evaluation: the dataset whose anomaly_classes no community trains '
        'on (null = off; fedgen_pl/metrics/anomaly.py)'),
    Key('metrics.anomaly_classes', List[int], [],
        'VAEs: the held-out classes of anomaly_data, scored against the normal test images per device'),
    Key('metrics.classifier_epochs', int, 2,
        'images: epochs of the scenario classifier (trained once, then cached)', ge=1),
    Key('metrics.classifier_train_samples', Optional[int], None,
        'images: train the classifier on this many samples (null = all; tests use fewer)'),
    Key('metrics.cache_dir', str, '~/.cache/fedgen-pl',
        'classifier cache (keyed by datasets, label space and code version)'),
    Key('privacy.noise_multiplier', float, 0.0,
        'sigma: Gaussian noise on what leaves a device, in units of privacy.clip; 0 = no privacy (no eps '
        'is reported). docs/method.md §15', ge=0),
    Key('privacy.clip', float, 1.0,
        'C: l2 bound of each per-sample feedback (fedgen_fr, fedgen_lr, md_gan; GS-WGAN) or of each '
        "device's model update (fed_gan, fed_cgan, fed_vae; DP-FedAvg)", gt=0),
    Key('privacy.loss_bound', float, 5.0,
        'b: L_kj is clamped into [-b, 0] before its noise (fedgen_fr, fedgen_lr, md_gan)', gt=0),
    Key('privacy.delta', float, 1.0e-5, 'delta of the reported (eps, delta)', gt=0, lt=1),
    Key('privacy.target_epsilon', Optional[float], None,
        'solve privacy.noise_multiplier for this eps at the end of the schedule, before training (null = '
        'use privacy.noise_multiplier)'),
    Key('trainer.accelerator', str, 'auto',
        'auto | cpu | gpu (Lightning accelerator; one device)',
        choices=('auto', 'cpu', 'gpu', 'cuda', 'mps')),
    Key('trainer.precision', str, 'auto',
        'Lightning precision: auto | 32-true | 16-mixed | bf16-mixed; auto = bf16-mixed for the GANs on images'
        ' on a CPU where bf16 was measured faster (AMX, or AVX512-BF16 on AMD), else 32-true (the run records which)',
        choices=('auto', '32-true', '32', '16-mixed', 'bf16-mixed')),
    Key('trainer.log_every_n_iters', int, 10,
        'log per-iteration losses every n local iterations (each log syncs the host)', ge=1),
    Key('trainer.checkpoint_every_rounds', int, 10, 'write last.ckpt every n rounds (and at the end)', ge=1),
    Key('trainer.progress_bar', bool, True, "show Lightning's progress bar"),
    Key('trainer.member_execution', str, 'auto',
        "devices' networks: vmap (one batched call) | loop (one call each) | auto (loop for conv nets"
        ' on CPU, else vmap)', choices=('auto', 'vmap', 'loop')),
    Key('trainer.compile', str, 'none',
        "torch.compile the devices' and generators' networks: none | default (inductor) | reduce-"
        'overhead (+ CUDA graphs)', choices=('none', 'default', 'reduce-overhead')),
    Key('trainer.nonfinite', str, 'skip',
        'a NaN/inf loss or gradient of a device: skip its update and count it | stop with its name',
        choices=('skip', 'stop')),
    Key('deploy.exchange_timeout_s', float, 120.0,
        'sync: how long an edge waits for its devices; later feedback is left out and counted as a '
        'timeout', gt=0),
    Key('deploy.test_mode', bool, False,
        "the server sends each device its real batch's indices and D's first weights: the run equals "
        'the in-process one'),
    Key('deploy.transport', str, 'stream',
        'how each local iteration travels: messages (one Flower message per device and iteration) | stream (Flower '
        'starts each device once; a gRPC stream with the run\'s secret carries the iterations)',
        choices=('messages', 'stream')),
    Key('deploy.stream_address', str, '127.0.0.1:19500',
        'stream: the address the edge listens on and the devices dial (host:port)'),
    Key('deploy.stream_certificates', Optional[str], None,
        'stream: a directory with ca.crt, server.pem and server.key, the files given to flower-superlink '
        '--ssl-*: with them the stream is TLS (as Flower\'s channel); null: plaintext, as with --insecure'),
    Key('deploy.superlink_port', int, 19091,
        "deploy-local: the SuperLink's HTTP port on 127.0.0.1", ge=1024, lt=65536),
    Key('deploy.supernode_port', int, 19100,
        "deploy-local: the first SuperNode's Runtime API port (one per device, counting up)",
        ge=1024, lt=65536),
    Key('logger.wandb', bool, False, 'also log to Weights & Biases'),
    Key('logger.wandb_mode', str, 'offline',
        'offline (no account needed; `wandb sync` later) | online',
        choices=('offline', 'online', 'disabled')),
    Key('logger.wandb_project', str, 'fedgen-pl', 'W&B project name'),
]
SECTIONS = {     # the comment of a section's line in default.yaml
    "clock": "the virtual clock (integer ticks) behind sync and async updates",
    "deploy": "the tiers on separate machines through Flower (fedgen deploy-local; docs/method.md §14)",
    "privacy": "differential privacy of what leaves a device, with the (eps, delta) spent (docs/method.md §15)",
}
KEY = {key.name: key for key in KEYS}
CHOICES = {key.name: key.choices for key in KEYS if key.choices}


def _schema() -> type:
    """The typed OmegaConf schema: a dataclass per section, every key MISSING until the defaults layer."""
    sections: dict[str, list] = {}
    top = []
    for key in KEYS:
        section, _, name = key.name.rpartition(".")
        default = field(default=None) if key.default is None else field(default=MISSING)
        (sections.setdefault(section, []) if section else top).append((name, key.type, default))
    for section, fields in sections.items():
        schema = make_dataclass(f"{section.capitalize()}Config", fields)
        top.append((section, schema, field(default_factory=schema)))
    return make_dataclass("Config", top)


Config = _schema()


def defaults() -> DictConfig:
    """Every key's default as a config layer."""
    tree: dict = {}
    for key in KEYS:
        *path, name = key.name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[name] = key.default
    return OmegaConf.create(tree)


DEFAULTS_HEADER = """\
# Every key fedgen-pl knows, with its default. Generated from fedgen_pl/config.py (KEYS) by
# `fedgen config --defaults > configs/default.yaml`; edit KEYS, not this file. An experiment
# (configs/experiment/<name>.yaml) overrides some keys, its `schedules.<schedule>` block more, and the
# command line last:
#   fedgen train experiment=gaussian_grid seed=3 federation.local_iters=20
"""


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def defaults_yaml() -> str:
    """``configs/default.yaml``: every key, its default and its doc, one line each."""
    lines, section = [DEFAULTS_HEADER.rstrip("\n")], None
    for key in KEYS:
        parent, _, name = key.name.rpartition(".")
        if parent != section:
            section = parent
            lines.append("")
            if parent:
                head = f"{parent}:"
                lines.append(f"{head:<34} # {SECTIONS[parent]}" if parent in SECTIONS else head)
        text = f"{'  ' if parent else ''}{name}: {_yaml_value(key.default)}"
        lines.append(f"{text:<34} # {key.doc}")
    return "\n".join(lines) + "\n"


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
    import yaml

    parsed = OmegaConf.create()
    for item in overrides:       # one at a time, so an error names the override it is in
        try:
            parsed = OmegaConf.merge(parsed, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as err:
            problem = " ".join(str(getattr(err, "problem", "") or err).split())
            raise ConfigError(f"the value is not valid YAML ({problem}); in flow style put a space after every colon, "
                              f"e.g. federation.communities=[{{data: mnist, classes: [0, 1]}}]",
                              where=f"override '{item}'") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"cannot parse it: {str(err).splitlines()[0]}", where=f"override '{item}'") from None
    return parsed


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
        if key and isinstance(layer, DictConfig):      # name the key as written (dat.batch_size, not dat)
            written = [k for k in _all_keys(layer) if k == key or k.startswith(key + ".")]
            key = max(written, key=len, default=key)
        if ":" in key.rsplit(".", 1)[-1]:      # {data:mnist} is one key 'data:mnist' in YAML's flow style
            message += "; in flow style put a space after every colon: {data: mnist}"
        elif "not in" in message and "Did you mean" not in message:
            close = difflib.get_close_matches(key, _all_keys(base), n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        elif "could not be converted" in message or "is not a valid" in message:
            message += "; give a value of the key's type (fedgen config --keys lists every key's type and values)"
        raise ConfigError(f"{message} (in {source})", where=key or source) from None


def with_defaults(saved) -> DictConfig:
    """A saved run's configuration (a checkpoint's, a config.yaml) with today's defaults under it: keys added
    since the run was made take their default, which keeps the run's behaviour."""
    cfg = _merge(OmegaConf.structured(Config), defaults(), "the defaults (fedgen_pl/config.py KEYS)")
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
        plain = yaml.safe_load(Path(path).read_text())
        if plain is not None and not isinstance(plain, dict):      # OmegaConf would make a key of a lone value
            raise ConfigError(f"must hold a mapping of keys (key: value), not a {type(plain).__name__}",
                              where=str(path))
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
    cfg = _merge(OmegaConf.structured(Config), defaults(), "the defaults (fedgen_pl/config.py KEYS)")
    experiment = str(cli.get("experiment", cfg.experiment))
    path = experiment_path(experiment)
    cfg = _merge(cfg, experiment_layers(path), str(path))
    schedule = str(cli.get("schedule", cfg.schedule))
    _require(KEY["schedule"].problem(schedule) is None, "schedule", KEY["schedule"].problem(schedule) or "")
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
    """Every key against its own allowed values and range (``KEYS``), then the rules that tie keys together."""
    for key in KEYS:
        problem = key.problem(OmegaConf.select(cfg, key.name))
        _require(problem is None, key.name, problem or "")
    for name in cfg.schedules:
        _require(name in KEY["schedule"].choices, f"schedules.{name}",
                 f"unknown schedule; experiments may define {', '.join(KEY['schedule'].choices)}")

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
        _require(root.is_dir(), "data.root", f"'{root}' {'is a file, not a directory' if root.exists() else 'does not exist'}"
                                             f"; point data.root at the directory that holds your datasets (README, "
                                             f"'Your own dataset')")
    for i, community in enumerate(fed.communities):
        if community.classes is not None:
            _require(len(community.classes) >= 1, f"federation.communities[{i}].classes",
                     "must list at least one class (or be omitted for all classes)")
            _require(len(set(community.classes)) == len(community.classes),
                     f"federation.communities[{i}].classes", f"has duplicates: {list(community.classes)}")

    m = cfg.model
    film = m.domain_conditioning in ("film", "film_output")
    _require(m.film_output_gain_init == 1.0 or film, "model.film_output_gain_init",
             f"only applies to domain_conditioning=film or film_output, got {m.film_output_gain_init} with "
             f"{m.domain_conditioning}")
    _require(m.film_output_shift or film, "model.film_output_shift",
             f"only applies to domain_conditioning=film or film_output, got {m.domain_conditioning}")
    _require(m.film_output_gain_scale == 1.0 or film, "model.film_output_gain_scale",
             f"only applies to domain_conditioning=film or film_output, got {m.film_output_gain_scale} with "
             f"{m.domain_conditioning}")
    c = cfg.clock
    _require(c.delay_high >= c.delay_low, "clock.delay_high",
             f"must be >= clock.delay_low ({c.delay_low}), got {c.delay_high}")
    tls = cfg.deploy.stream_certificates
    if tls:
        missing = [name for name in ("ca.crt", "server.pem", "server.key") if not (Path(tls).expanduser() / name).is_file()]
        _require(not missing, "deploy.stream_certificates", f"'{tls}' lacks {', '.join(missing)}; give the directory "
                                                            f"with the files flower-superlink --ssl-* uses")
    mc = cfg.metrics
    _require(mc.kid_subset_size == "auto" or (isinstance(mc.kid_subset_size, int) and not isinstance(
        mc.kid_subset_size, bool) and 1 <= mc.kid_subset_size <= mc.num_samples), "metrics.kid_subset_size",
             f"must be auto (= min(1000, metrics.num_samples)) or an int in 1..metrics.num_samples "
             f"({mc.num_samples}), got {mc.kid_subset_size!r}")
    _require(mc.inception_samples == "num_samples" or (isinstance(mc.inception_samples, int) and not isinstance(
        mc.inception_samples, bool) and mc.inception_samples >= 10), "metrics.inception_samples",
             f"must be num_samples or an int >= 10, got {mc.inception_samples!r}")
    if mc.anomaly_data is not None:
        _require(len(mc.anomaly_classes) > 0, "metrics.anomaly_classes",
                 "lists no class; give the held-out classes of metrics.anomaly_data, e.g. [9]")
        for i, community in enumerate(fed.communities):
            if community.data == mc.anomaly_data:
                trained = set(mc.anomaly_classes) if community.classes is None else set(community.classes)
                overlap = sorted(trained & set(mc.anomaly_classes))
                _require(not overlap, "metrics.anomaly_classes",
                         f"community {i} trains on class(es) {overlap} of {mc.anomaly_data}, so they are not "
                         f"anomalies; give federation.communities[{i}].classes without them")
    _require(mc.classifier_train_samples is None or mc.classifier_train_samples >= 100,
             "metrics.classifier_train_samples", f"must be null (all) or >= 100, got {mc.classifier_train_samples}")
