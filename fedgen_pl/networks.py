"""Generators and discriminators (docs/method.md §10, §6).

Every network is a plain ``nn.Module`` whose ``forward`` works on one batch; the federation stacks
copies with ``StackedModule`` and runs them with ``vmap``. Discriminators therefore use no BatchNorm
(per-sample independence) and return one logit per sample. Conditioning: generators take an integer
label (``num_labels = 0``: unconditional) and discriminators use a projection head
(Miyato & Koyama 2018), ``D(x, y) = psi(h(x)) + <embed(y), h(x)>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPGenerator(nn.Module):
    """z (+ one-hot label) -> MLP -> a point in R^out_dim (the Gaussian grid)."""

    def __init__(self, latent_dim: int, out_dim: int, num_labels: int = 0, hidden_dim: int = 128,
                 layers: int = 2):
        super().__init__()
        self.num_labels = num_labels
        dims = [latent_dim + num_labels] + [hidden_dim] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out), nn.ReLU()]
        blocks.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_labels:
            z = torch.cat([z, F.one_hot(labels, self.num_labels).to(z.dtype)], dim=-1)
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """x -> MLP features h -> logit, with a projection term for the label when conditional."""

    def __init__(self, in_dim: int, num_labels: int = 0, hidden_dim: int = 128, layers: int = 2):
        super().__init__()
        self.num_labels = num_labels
        dims = [in_dim] + [hidden_dim] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden_dim, 1)
        if num_labels:
            self.label_embedding = nn.Embedding(num_labels, hidden_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x)
        logit = self.head(h).squeeze(-1)
        if self.num_labels:
            logit = logit + (self.label_embedding(labels) * h).sum(-1)
        return logit


class DCGANGenerator(nn.Module):
    """z (+ one-hot label) -> fc -> 2 transposed convs -> image in [-1, 1] (DCGAN-style, 28x28 by default).

    ``output="logits"`` drops the final tanh (the VAE's decoder emits pixel logits).
    Normalisation is per sample (GroupNorm) or none: batch statistics would make a device's samples
    depend on the other devices' batch and running statistics would need their own aggregation rule
    (docs/method.md §10)."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], num_labels: int = 0,
                 channels: int = 64, norm: str = "group", output: str = "tanh"):
        super().__init__()
        c_out, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"DCGAN networks need image sides divisible by 4, got {height}x{width}")
        self.num_labels = num_labels
        self.start = (2 * channels, height // 4, width // 4)

        def norm_layer(c: int) -> nn.Module:
            return nn.GroupNorm(min(8, c), c) if norm == "group" else nn.Identity()

        self.project = nn.Linear(latent_dim + num_labels, 2 * channels * (height // 4) * (width // 4))
        self.body = nn.Sequential(
            norm_layer(2 * channels), nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), norm_layer(channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, c_out, 4, 2, 1), nn.Tanh() if output == "tanh" else nn.Identity(),
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_labels:
            z = torch.cat([z, F.one_hot(labels, self.num_labels).to(z.dtype)], dim=-1)
        return self.body(self.project(z).view(-1, *self.start))


class DCGANDiscriminator(nn.Module):
    """image -> 2 strided convs -> features h -> logit, projection term for the label when conditional.
    ``features = 0``: h is the flattened conv output (plain DCGAN); else one hidden layer of that width.
    No normalisation: every sample is scored independently (docs/method.md §10)."""

    def __init__(self, image_shape: tuple[int, int, int], num_labels: int = 0, channels: int = 32,
                 features: int = 0):
        super().__init__()
        c_in, height, width = image_shape
        self.num_labels = num_labels
        flat = 2 * channels * (height // 4) * (width // 4)
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        ]
        if features:
            layers += [nn.Linear(flat, features), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        width_h = features or flat
        self.head = nn.Linear(width_h, 1)
        if num_labels:
            self.label_embedding = nn.Embedding(num_labels, width_h)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.body(x)
        logit = self.head(h).squeeze(-1)
        if self.num_labels:
            logit = logit + (self.label_embedding(labels) * h).sum(-1)
        return logit


class DomainDCGANGenerator(nn.Module):
    """The label-related scenario's generator G(z, c) (docs/method.md §7; RegCGAN); no class label is
    given, so z must carry the class. ``first_layer=True`` returns G1(z, c), the first layer's output,
    for L_inv. The one-hot domain code c reaches every layer in one of two ways (``conditioning``):

    - ``concat`` (RegCGAN, the default): c is concatenated to z and to every later layer's input, so it
      only adds a per-domain bias to each layer. The first layer is linear, so G1(z, c_k) - G1(z, c_k')
      is the difference of two weight columns whatever z: L_inv can only equalise those columns.
    - ``film``: every layer's output is scaled and shifted per domain and channel (conditional
      normalisation), ``h -> gain[c] * h + shift[c]``, gains starting at 1 and shifts at 0. A domain
      that is a pixel-wise transform of another (inverse MNIST: gain -1 before tanh) is then reachable
      with every weight shared, so the same z can keep its class.
    - ``film_output``: an ablation that departs from docs/method.md §7 ("c reaches every layer"): only the
      output layer is scaled and shifted per domain, so the domains differ by a pixel-wise map of one
      shared image and the same z keeps its shape by construction; G1 ignores the code (L_inv = 0).

    ``output_gain_init`` sets the output layer's initial gains (film, film_output); ``output_shift=False``
    drops the output layer's per-domain shift, so a domain's background can only come from the shared
    drawing scaled by its gain (not from a per-domain constant).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], num_domains: int,
                 channels: int = 32, norm: str = "group", conditioning: str = "concat",
                 output_gain_init: float = 1.0, output_shift: bool = True, output_gain_scale: float = 1.0):
        super().__init__()
        c_out, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"DCGAN networks need image sides divisible by 4, got {height}x{width}")
        if conditioning not in ("concat", "film", "film_output"):
            raise ValueError(f"model.domain_conditioning must be concat, film or film_output, got {conditioning!r}")
        self.num_labels = num_domains        # the conditioning input is the domain index
        self.conditioning = conditioning
        # The output gain is output_gain_scale x its parameter: under Adam (steps of about lr whatever the
        # gradient's size) it moves output_gain_scale times faster than the other weights.
        self.output_gain_scale = output_gain_scale
        self.start = (2 * channels, height // 4, width // 4)

        def norm_layer(c: int) -> nn.Module:
            return nn.GroupNorm(min(8, c), c) if norm == "group" else nn.Identity()

        extra = num_domains if conditioning == "concat" else 0
        self.project = nn.Linear(latent_dim + extra, 2 * channels * (height // 4) * (width // 4))
        self.act1 = nn.Sequential(norm_layer(2 * channels), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * channels + extra, channels, 4, 2, 1)
        self.act2 = nn.Sequential(norm_layer(channels), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(channels + extra, c_out, 4, 2, 1)
        # per domain and channel, after each of the three layers (film) or the last one only (film_output)
        film_channels = {"concat": {}, "film": {0: 2 * channels, 1: channels, 2: c_out},
                         "film_output": {2: c_out}}[conditioning]
        # output_gain_init = 0: a gain that starts at 1 must cross 0 (a grey image) to flip a domain's
        # sign, which training was not seen to do; from 0 each domain's discriminator picks the sign
        self.gains = nn.ParameterDict({str(i): nn.Parameter(torch.full((num_domains, c),
                                                                       output_gain_init / output_gain_scale
                                                                       if i == 2 else 1.0))
                                       for i, c in film_channels.items()})
        self.shifts = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(num_domains, c))
                                        for i, c in film_channels.items() if i != 2 or output_shift})

    @staticmethod
    def _with_code(h: Tensor, code: Tensor) -> Tensor:
        return torch.cat([h, code[:, :, None, None].expand(-1, -1, *h.shape[-2:])], dim=1)

    def _film(self, h: Tensor, code: Tensor, layer: int) -> Tensor:
        if str(layer) not in self.gains:                                      # film_output: layers 0, 1 shared
            return h
        gain = code @ self.gains[str(layer)]                                   # [B, C] from one-hot codes
        if layer == 2:
            gain = gain * self.output_gain_scale
        if str(layer) not in self.shifts:
            return gain[:, :, None, None] * h
        return gain[:, :, None, None] * h + (code @ self.shifts[str(layer)])[:, :, None, None]

    def forward(self, z: Tensor, labels: Tensor, first_layer: bool = False) -> Tensor:
        code = F.one_hot(labels, self.num_labels).to(z.dtype)
        if self.conditioning == "concat":
            h = self.project(torch.cat([z, code], dim=-1))
            if first_layer:
                return h
            h = self.act1(h.view(-1, *self.start))
            h = self.act2(self.up1(self._with_code(h, code)))
            return torch.tanh(self.up2(self._with_code(h, code)))
        h = self._film(self.project(z).view(-1, *self.start), code, 0)
        if first_layer:
            return h.flatten(1)
        h = self.act2(self._film(self.up1(self.act1(h)), code, 1))
        return torch.tanh(self._film(self.up2(h), code, 2))


class DomainClassifier(nn.Module):
    """The cloud's domain classifier C (label-related scenario): image -> logits over the K domains."""

    def __init__(self, image_shape: tuple[int, int, int], num_domains: int, channels: int = 16):
        super().__init__()
        c_in, height, width = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(c_in, channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * channels * (height // 4) * (width // 4), num_domains),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _arch(model_cfg, spec) -> str:
    if model_cfg.arch != "auto":
        return model_cfg.arch
    return "mlp" if len(spec.data_shape) == 1 else "dcgan"


def build_generator(model_cfg, spec, conditioning: str = "class") -> nn.Module:
    """A generator: conditional on class labels (``model.conditional``), or on the community's domain code
    (``conditioning="domain"``, the label-related models)."""
    if conditioning == "domain":
        m = model_cfg
        return DomainDCGANGenerator(m.latent_dim, spec.data_shape, spec.num_communities, m.g_channels, m.g_norm,
                                    m.domain_conditioning, m.film_output_gain_init, m.film_output_shift,
                                    m.film_output_gain_scale)
    num_labels = spec.num_labels if model_cfg.conditional else 0
    arch = _arch(model_cfg, spec)
    if arch == "mlp" and len(spec.data_shape) == 1:
        return MLPGenerator(model_cfg.latent_dim, spec.data_shape[0], num_labels, model_cfg.hidden_dim)
    if arch == "dcgan" and len(spec.data_shape) == 3:
        return DCGANGenerator(model_cfg.latent_dim, spec.data_shape, num_labels, model_cfg.g_channels,
                              model_cfg.g_norm)
    raise ValueError(f"model.arch={model_cfg.arch}: no generator for data of shape {spec.data_shape}")


def build_discriminator(model_cfg, spec, conditioning: str = "class") -> nn.Module:
    """A device's discriminator (also built on a deployed device), conditioned as ``build_generator``."""
    if conditioning == "domain":
        return DCGANDiscriminator(spec.data_shape, spec.num_communities, model_cfg.d_channels, model_cfg.d_features)
    num_labels = spec.num_labels if model_cfg.conditional and model_cfg.conditional_discriminator else 0
    arch = _arch(model_cfg, spec)
    if arch == "mlp" and len(spec.data_shape) == 1:
        return MLPDiscriminator(spec.data_shape[0], num_labels, model_cfg.hidden_dim)
    if arch == "dcgan" and len(spec.data_shape) == 3:
        return DCGANDiscriminator(spec.data_shape, num_labels, model_cfg.d_channels, model_cfg.d_features)
    raise ValueError(f"model.arch={model_cfg.arch}: no discriminator for data of shape {spec.data_shape}")


def real_labels(conditioning: str, labels: Tensor, community: int | Tensor) -> Tensor:
    """The labels a device's discriminator sees with its real batch: the class labels, or its community's
    domain code (also on a deployed device, fedgen_pl/flower/)."""
    if conditioning == "domain":
        return torch.as_tensor(community, device=labels.device).expand_as(labels).clone()
    return labels
