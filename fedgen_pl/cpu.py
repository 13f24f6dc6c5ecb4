"""This machine's CPU: what /proc/cpuinfo says of it, and whether bf16 pays on it (which ``auto`` precision
settings follow: ``trainer.precision`` in fedgen_pl/train.py, ``metrics.inception_precision`` in
fedgen_pl/metrics/inception.py)."""

from __future__ import annotations

import torch


def cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo ("vendor_id", "model name"), or "" where the system does
    not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == name), "")
    except OSError:
        return ""


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD"), or ""."""
    return cpuinfo_field("vendor_id")


def bf16_pays(amx: bool, avx512_bf16: bool, vendor: str) -> bool:
    """Whether bf16 autocast makes a GAN step faster on a CPU, by what was measured (benchmarks/RESULTS.md, the
    training phase of `make train` at bf16 against fp32): with AMX tiles (an Intel Xeon: 1.26x), or AVX512-BF16
    on an AMD CPU (an AMD EPYC: 1.23x); not AVX512-BF16 alone on an Intel CPU (an Intel Xeon without AMX: 0.89x,
    slower; the Inception network there: 0.66-0.75x against fp32), nor where bf16 is emulated."""
    return amx or (avx512_bf16 and vendor == "AuthenticAMD")


def bf16_units() -> list[str]:
    """The CPU's bf16 hardware, as torch's probes see it: "AVX512-BF16" and "AMX" where present. Two CPUs of
    one model name can differ here, and run bf16 1.6x apart (benchmarks/RESULTS.md), so records name them."""
    probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    return [unit for unit, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]


def cpu_bf16_pays() -> bool:
    """``bf16_pays`` for this machine's CPU."""
    units = bf16_units()
    return bf16_pays("AMX" in units, "AVX512-BF16" in units, cpu_vendor())
