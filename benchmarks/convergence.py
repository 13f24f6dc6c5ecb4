"""FID against rounds for long runs, and the round at which each converged (fedgen_pl/convergence.py).

    .venv/bin/python benchmarks/convergence.py RUN_DIR [RUN_DIR ...] --out docs/results/figures/convergence.png

Prints one Markdown row per run (raw and EMA generator) and draws every run's global `fid_classifier`
(solid) and its EMA's (dashed) on a log scale, the converged round marked. A run is named by its path
below the runs' common folder (`fp32/literature/mnist/FR_sync/seed0`, not only `seed0`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedgen_pl.convergence import convergence_round, fid_curve  # noqa: E402
from fedgen_pl.plots import plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metric", default="global/fid_classifier")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(8, 5))
    print(f"| run | rounds | converged ({args.metric}) | FID there | FID at the end | EMA converged | EMA FID at the end |")
    print("|---|---|---|---|---|---|---|")
    common = Path(os.path.commonpath([r.resolve() for r in args.runs])) if len(args.runs) > 1 else None
    for run_dir in args.runs:
        name = str(run_dir.resolve().relative_to(common)) if common else run_dir.name
        total = int(OmegaConf.load(run_dir / "config.yaml").federation.global_rounds)
        cells = []
        for prefix, style in (("", "-"), ("ema/", "--")):
            rounds, fids = fid_curve(run_dir, prefix + args.metric)
            if not rounds:
                cells += ["–", "–", "–"] if not prefix else ["–", "–"]
                continue
            done = convergence_round(rounds, fids, total)
            line, = ax.plot(rounds, fids, style, label=f"{name}{' EMA' if prefix else ''}")
            if done is not None:
                ax.axvline(done, color=line.get_color(), linestyle=":", linewidth=1)
            at = fids[rounds.index(done)] if done is not None else None
            cells += ([str(done) if done is not None else "not yet", f"{at:.1f}" if at else "–", f"{fids[-1]:.1f}"]
                      if not prefix else [str(done) if done is not None else "not yet", f"{fids[-1]:.1f}"])
        print(f"| `{name}` | {rounds[-1] if rounds else 0}/{total} | " + " | ".join(cells) + " |")
    ax.set_yscale("log")
    ax.set_xlabel("global round")
    ax.set_ylabel(args.metric)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
