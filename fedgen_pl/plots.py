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


def partition_histogram(histogram, spec, path: Path) -> Path:
    """Per-device class counts as a heat map: one row per device, one column per global label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    num_devices, num_labels = histogram.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * num_labels + 2), max(3, 0.28 * num_devices + 1.5)))
    image = ax.imshow(histogram, aspect="auto", cmap="viridis")
    ax.set_xticks(range(num_labels))
    ax.set_xticklabels(spec.label_names, rotation=90, fontsize=6)
    community = spec.community_of_device
    ax.set_yticks(range(num_devices))
    ax.set_yticklabels([f"c{community[n]} d{n}" for n in range(num_devices)], fontsize=6)
    for boundary in [i - 0.5 for i in range(1, num_devices) if community[i] != community[i - 1]]:
        ax.axhline(boundary, color="white", lw=1)
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_title("samples per device and label", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(images, path: Path, nrow: int, title: str = "", row_labels=None) -> Path:
    """Images in [-1, 1] (``[n, C, H, W]``) as one PNG grid with ``nrow`` images per row."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    grid = torchvision.utils.make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1),
                                       pad_value=1.0)
    rows = -(-len(images) // nrow)
    fig, ax = plt.subplots(figsize=(max(3, nrow * 0.45 + 1.5), max(2, rows * 0.45 + 0.6)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        height = images.shape[-2] + 2
        ax.set_yticks([2 + height * (i + 0.5) for i in range(len(row_labels))])
        ax.set_yticklabels(row_labels, fontsize=6)
    else:
        ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def sample_grids(model, plot_dir: Path, per_label: int = 8) -> list[Path]:
    """The global generator's sample grids (fixed latents, so evaluations compare): for a class-conditional
    model ``samples_global.png`` (one row per label) and ``samples_community_k.png`` (the labels its devices
    hold); for a domain-conditional one (``paired_samples``) one column per z, one row per domain."""
    import torch

    plot_dir = Path(plot_dir)
    generator = torch.Generator(device=model.device).manual_seed(4321)
    spec = model.spec
    if model.recipe.conditioning == "domain":
        paired = model.paired_samples(12, generator)
        return [image_grid(paired.flatten(0, 1), plot_dir / "samples_global.png", nrow=12,
                           title=f"global generator, round {model.round}: one column per z",
                           row_labels=spec.community_names)]
    labels = torch.arange(spec.num_labels, device=model.device).repeat_interleave(per_label)
    images = model.sample_global(labels, generator)
    paths = [image_grid(images, plot_dir / "samples_global.png", nrow=per_label,
                        title=f"global generator, round {model.round}", row_labels=spec.label_names)]
    # Each community's rows: the labels its devices hold (G_k equals G after every aggregation).
    for k, (name, held) in enumerate(zip(spec.community_names, spec.community_labels)):
        rows = torch.cat([torch.arange(i * per_label, (i + 1) * per_label) for i in held])
        paths.append(image_grid(images[rows], plot_dir / f"samples_community_{k}.png", nrow=per_label,
                                title=f"community {name}, round {model.round}",
                                row_labels=[spec.label_names[i] for i in held]))
    return paths
