"""Virtual time for sync and async edges to reach a quality bar on the Gaussian grid.

Runs ``gaussian_grid_async`` (heterogeneous devices: delays uniform in 10-60 ticks, 20% stragglers 4x
slower) with ``federation.update=sync`` and ``=async`` for several seeds, each until the global
generator has ``high_quality_share >= bar`` with all 9 modes covered (or ``--rounds``), and reports the
round and virtual time (ticks) at which it did. ``high_quality_share`` alone is no bar: a generator
collapsed onto one mode has it near 1 (seen in the first rounds), so the script also prints when the
share alone first passed. Every number comes from the runs' own metrics.csv.

    .venv/bin/python benchmarks/sync_vs_async_grid.py [--seeds 0 1 2] [--bar 0.8] [--rounds 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import pytorch_lightning as pl

from callbacks import GaussianGridMetrics
from fedgen_pl.config import load_config
from fedgen_pl.train import train


class StopAtBar(pl.Callback):
    """Stop training once the grid evaluation reports high_quality_share >= bar and every mode covered."""

    def __init__(self, bar: float):
        self.bar = bar

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, GaussianGridMetrics):
                latest = callback.latest
                if (latest.get("global/high_quality_share", 0.0) >= self.bar
                        and latest.get("global/modes_covered", 0) == MODES):
                    trainer.should_stop = True


MODES = 9


def first_reaching(run_dir: Path, bar: float, modes: int = 0) -> tuple[int | None, int | None]:
    """(round, virtual time) of the first evaluation with high_quality_share >= bar and >= modes covered."""
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            value, covered = row.get("global/high_quality_share"), row.get("global/modes_covered")
            if value and float(value) >= bar and float(covered) >= modes:
                return int(float(row["round"])), int(float(row["virtual_time"]))
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bar", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="sync-vs-async-"))
    rows = []
    for seed in args.seeds:
        for update in ("sync", "async"):
            run_dir = root / f"{update}-seed{seed}"
            cfg = load_config(["experiment=gaussian_grid_async", f"federation.update={update}", f"seed={seed}",
                               f"federation.global_rounds={args.rounds}", "trainer.progress_bar=false",
                               f"output_dir={run_dir}"])
            train(cfg, extra_callbacks=[StopAtBar(args.bar)])
            summary = json.loads((run_dir / "summary.json").read_text())
            round_, ticks = first_reaching(run_dir, args.bar, MODES)
            share_round, share_ticks = first_reaching(run_dir, args.bar)
            rows.append(dict(seed=seed, update=update, round=round_, ticks=ticks, summary=summary,
                             share_only=f"{share_round} ({share_ticks})" if share_round is not None else "-"))

    print(f"\nGaussian grid, gaussian_grid_async clock (tiers: 10-60 ticks, 20% stragglers x4), at most "
          f"{args.rounds} rounds; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"\n| seed | update | first round with 9/9 modes and high_quality_share >= {args.bar} | virtual time "
          f"then (ticks) | modes at the end | high_quality_share at the end | share alone >= {args.bar}: round "
          f"(ticks) | wall time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["summary"]["metrics"]
        print(f"| {r['seed']} | {r['update']} | {r['round'] if r['round'] is not None else 'not reached'} | "
              f"{r['ticks'] if r['ticks'] is not None else '-'} | {m['global/modes_covered']}/9 | "
              f"{m['global/high_quality_share']:.3f} | {r['share_only']} | {r['summary']['wall_time_s']:.0f} |")
    for update in ("sync", "async"):
        ticks = [r["ticks"] for r in rows if r["update"] == update and r["ticks"] is not None]
        reached = f"{len(ticks)}/{len(args.seeds)} seeds reached the bar"
        mean = f"mean {statistics.mean(ticks):.0f} ticks" if ticks else "no mean"
        print(f"\n{update}: {reached}; {mean}")
    print(f"\nruns in {root}")


if __name__ == "__main__":
    main()
