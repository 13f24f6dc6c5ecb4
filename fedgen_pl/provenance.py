"""Where a number came from: the date, the code's commit and the hardware, for every table written."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def hardware() -> str:
    """CPU model (with its bf16 units) and core count, torch's thread count, and the GPU when one is visible."""
    import torch

    from fedgen_pl.cpu import bf16_units, cpuinfo_field

    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    if units := bf16_units():
        cpu += f" ({', '.join(units)})"

    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def provenance() -> dict[str, str]:
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
            "hardware": hardware()}
