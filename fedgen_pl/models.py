"""``model.name`` -> the LightningModule class that builds it from its recipe row (recipes.py)."""

from __future__ import annotations

from fedgen_pl.gan import FederatedGAN
from fedgen_pl.recipes import recipe_of
from fedgen_pl.vae import FedVAE

FAMILIES = {"gan": FederatedGAN, "vae": FedVAE}


def model_class(name: str):
    return FAMILIES[recipe_of(name).family]
