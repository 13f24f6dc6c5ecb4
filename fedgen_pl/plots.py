"""Plots written into the run directory (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def scatter_grid(samples, labels, centres, std: float, path: Path, title: str = "") -> Path:
    """Generated 2-D samples coloured by label, with each mode's 3-std circle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(samples[:, 0], samples[:, 1], c=labels, cmap="tab10", s=3, alpha=0.5)
    for x, y in centres.tolist():
        ax.add_patch(plt.Circle((x, y), 3 * std, fill=False, color="black", lw=0.8))
    ax.set_xlim(-7, 7)
    ax.set_ylim(-7, 7)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
