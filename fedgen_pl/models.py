"""Models selectable with ``model.name``; each is a LightningModule built from (config, spec)."""

from __future__ import annotations

from fedgen_pl.errors import ConfigError
from fedgen_pl.baselines import CentralizedGAN, FedCGAN, FedGAN, MDGAN, RegCGAN
from fedgen_pl.label_related import LabelRelatedGAN
from fedgen_pl.system import FederatedGAN
from fedgen_pl.vae import FedVAE

MODELS = {
    "fedgen_fr": FederatedGAN,        # feature-related three-tier GAN (docs/method.md §2)
    "fedgen_lr": LabelRelatedGAN,     # label-related three-tier GAN (docs/method.md §7)
    "centralized_gan": CentralizedGAN,
    "md_gan": MDGAN,
    "fed_gan": FedGAN,
    "reg_cgan": RegCGAN,
    "fed_cgan": FedCGAN,
    "fed_vae": FedVAE,                # hierarchical FedAvg of device VAEs (docs/method.md §9)
}
LABEL_RELATED = ("fedgen_lr", "reg_cgan", "fed_cgan")


def model_class(name: str):
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(MODELS)}", where="model.name")
    return MODELS[name]
