"""Every ``model.name`` as one row of parts: the same engine (data, networks, clock, metrics) composed
differently. A new baseline is one row here, plus at most one new part.

| model.name      | family | generators | discriminators | conditioning | edge rule  | regulariser | cloud       | round end               | traffic |
|-----------------|--------|------------|----------------|--------------|------------|-------------|-------------|-------------------------|---------|
| fedgen_fr       | gan    | community  | device         | class        | configured | -           | configured  | -                       | samples |
| fedgen_lr       | gan    | community  | device         | domain       | configured | inv + spe   | configured  | train domain classifier | samples |
| centralized_gan | gan    | single     | single         | class        | plain mean | -           | fedavg (=G) | -                       | none    |
| md_gan          | gan    | single     | device         | class        | plain mean | -           | fedavg (=G) | -                       | samples |
| fed_gan         | gan    | device     | device         | class        | configured | -           | fedavg      | average discriminators  | models  |
| reg_cgan        | gan    | single     | single         | domain       | plain mean | inv         | fedavg (=G) | -                       | none    |
| fed_cgan        | gan    | device     | device         | domain       | configured | -           | fedavg      | average discriminators  | models  |
| fed_vae         | vae    | device     | -              | class        | -          | -           | fedavg      | -                       | models  |
| centralized_vae | vae    | single     | -              | class        | -          | -           | fedavg (=G) | -                       | none    |

The parts:
- **generators / discriminators**: which network serves each device: one per ``community`` (its edge), one
  ``single`` network for all (the discriminator then sees the pooled batch), or one per ``device``.
- **conditioning**: ``class`` labels with the fake-label protocol (method §6), or the community's ``domain``
  code (the label-related scenario, method §7; label_related.py).
- **edge rule**: ``configured`` is Eq. 4 (sync, ``tau_edge``) or Eq. 5 (async); ``plain mean`` is tau = 0
  (AsynDGAN's generator weighs its devices equally). One generator per device makes the rule moot.
- **regulariser**: the label-related edge loss terms, ``inv`` (L_inv) and ``spe`` (L_spe, with the domain
  classifier C that the cloud trains and sends down).
- **cloud**: ``configured`` is ``federation.aggregation`` with ``tau_cloud`` and ``cloud_lr``; ``fedavg`` is
  FedAvg by sample counts (with one generator: G <- G_1).
- **round end**: what the cloud does after the new global model is in place.
- **traffic**: what crosses the network: generated ``samples`` and feedback per iteration, whole ``models``
  per round (FedAvg), or ``none`` (one machine).

Papers: centralized GAN and RegCGAN (Mao & Li 2018) are pooled-data references; M-D GAN is the paper's
name for AsynDGAN (Chang et al. 2020); Fed GAN is Fan & Liu 2020; FedCGAN is Fed GAN with domain-conditional
networks. RegCGAN's second regulariser (the discriminator's last hidden layer, their Fig. 1(d)) is not
part of the method and not built.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from fedgen_pl.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    family: str = "gan"                  # gan (FederatedGAN, gan.py) | vae (FedVAE, vae.py)
    generators: str = "community"        # community | single | device
    discriminators: str = "device"       # device | single
    conditioning: str = "class"          # class | domain
    edge_rule: str = "configured"        # configured (Eq. 4 / Eq. 5) | plain_mean
    regulariser: tuple[str, ...] = ()    # () | ("inv",) | ("inv", "spe")
    cloud: str = "configured"            # configured (federation.aggregation) | fedavg
    round_end: tuple[str, ...] = ()      # average_discriminators | train_domain_classifier
    traffic: str = "samples"             # samples | models | none

    @property
    def baseline(self) -> bool:
        """A baseline: its own rules replace the federation keys of the three-tier models."""
        return self.cloud == "fedavg" and self.family == "gan"

    def replaced_keys(self) -> str:
        keys = "federation.tau_edge, federation.tau_cloud, federation.cloud_lr, federation.aggregation"
        if self.conditioning != "domain":
            return keys
        unused = [k for k, part in (("model.lambda_inv", "inv"), ("model.lambda_spe", "spe")) if part not in self.regulariser]
        return ", ".join([keys, *unused, "model.classifier_steps"])


FEDAVG_GAN = dict(generators="device", edge_rule="configured", cloud="fedavg", round_end=("average_discriminators",),
                  traffic="models")
RECIPES: dict[str, Recipe] = {
    "fedgen_fr": Recipe(),
    "fedgen_lr": Recipe(conditioning="domain", regulariser=("inv", "spe"), round_end=("train_domain_classifier",)),
    "centralized_gan": Recipe(generators="single", discriminators="single", edge_rule="plain_mean", cloud="fedavg",
                              traffic="none"),
    "md_gan": Recipe(generators="single", edge_rule="plain_mean", cloud="fedavg"),
    "fed_gan": Recipe(**FEDAVG_GAN),
    "reg_cgan": Recipe(generators="single", discriminators="single", conditioning="domain", edge_rule="plain_mean",
                       regulariser=("inv",), cloud="fedavg", traffic="none"),
    "fed_cgan": Recipe(conditioning="domain", **FEDAVG_GAN),
    "fed_vae": Recipe(family="vae", generators="device", discriminators="device", cloud="fedavg", traffic="models"),
    "centralized_vae": Recipe(family="vae", generators="single", discriminators="single", cloud="fedavg",
                              traffic="none"),
}
LABEL_RELATED = tuple(name for name, recipe in RECIPES.items() if recipe.conditioning == "domain")

# Keys about the class labels of generated samples, with their defaults: meaningful only where fakes carry
# class labels (class conditioning, conditional networks).
CLASS_LABEL_KEYS = {"federation.fake_labels": "device", "model.conditional_discriminator": True,
                    "model.unheld_label_fakes": "judge"}


def recipe_of(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(RECIPES)}", where="model.name")
    return RECIPES[name]


def check_recipe_config(cfg) -> None:
    """Refuse settings the configured model cannot honour (before anything is built)."""
    recipe = recipe_of(cfg.model.name)
    for key, default in CLASS_LABEL_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if value == default:
            continue
        if recipe.family == "vae" or recipe.conditioning == "domain":
            raise ConfigError(f"'{value}' has no meaning for model.name={cfg.model.name} (its samples carry no "
                              f"class label to draw); leave it at {str(default).lower()}", where=key)
        if not cfg.model.conditional:
            raise ConfigError(f"'{value}' needs class-conditional networks (model.conditional=true)", where=key)
    if recipe.family != "vae" and cfg.metrics.anomaly_data is not None:
        raise ConfigError(f"anomaly scores are VAE likelihoods; model.name={cfg.model.name} has none (use fed_vae "
                          f"or centralized_vae), or leave it null", where="metrics.anomaly_data")
    if recipe.family != "vae" and cfg.model.vae_average != "all":
        raise ConfigError(f"'{cfg.model.vae_average}' chooses what fed_vae averages; model.name={cfg.model.name} "
                          f"is not a VAE, so leave it at all", where="model.vae_average")
    for key in ("model.instance_noise", "model.r1_gamma", "model.non_saturating_warmup"):      # what a GAN's devices compute
        if recipe.family == "vae" and OmegaConf.select(cfg, key) != 0:
            raise ConfigError(f"{OmegaConf.select(cfg, key)} applies to a GAN's device discriminators; model.name="
                              f"{cfg.model.name} has no discriminator, so leave it at 0", where=key)
    if cfg.model.r1_gamma and cfg.trainer.compile != "none":
        raise ConfigError(f"the R1 penalty (model.r1_gamma={cfg.model.r1_gamma}) needs a double backward, which "
                          f"torch.compile does not support; set trainer.compile=none, or model.r1_gamma=0",
                          where="trainer.compile")
    if cfg.model.non_saturating_warmup and cfg.model.gan_loss != "saturating":
        raise ConfigError(f"{cfg.model.non_saturating_warmup} warm-up rounds of the non-saturating loss change "
                          f"nothing under model.gan_loss={cfg.model.gan_loss}; leave it at 0, or set "
                          f"model.gan_loss=saturating", where="model.non_saturating_warmup")
    if recipe.family == "vae" and recipe.generators == "single" and cfg.model.vae_average != "all":
        raise ConfigError(f"'{cfg.model.vae_average}' has no meaning for the one pooled-data VAE of "
                          f"{cfg.model.name}; leave it at all", where="model.vae_average")
    averages_devices = recipe.traffic == "models" and not (recipe.family == "vae" and cfg.model.vae_average == "none")
    if cfg.federation.fedavg_via_edges and not averages_devices:
        raise ConfigError(f"model.name={cfg.model.name} averages no device models, so there is nothing to send "
                          f"through the edges (fed_gan, fed_cgan and fed_vae do); leave it false",
                          where="federation.fedavg_via_edges")
    if recipe.conditioning == "domain" and cfg.data.label_space != "shared":
        raise ConfigError(f"the label-related model ({cfg.model.name}) needs label_space=shared (the same "
                          f"classes in every domain)", where="data.label_space")
