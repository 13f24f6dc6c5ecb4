"""What a table will cost before it runs: core-hours per column, measured on this machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/table_cost.py --tables literature --schedule full --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/table_cost.py --tables table1 --splits noniid --out runs/t1

For every (split, column) of the tables it builds the run's system from the table's own configuration
(configs/tables/<table>.yaml, the same overrides as ``fedgen table``) and measures, in CPU seconds of this
process (``time.process_time``: all its threads, so the figure is core-seconds and holds on a shared machine):

- a training round (the clock's events of ``--rounds`` rounds after one warm-up round, the cloud's
  aggregation included, under the autocast of ``trainer.precision``);
- a periodic evaluation (``GenerationEvaluator.evaluate_model`` without Inception, the EMA's included);
- the Inception network per image at ``metrics.inception_precision`` (when the run scores ``fid_inception``),
  times the images its last evaluation generates (``metrics.inception_samples`` per Inception scope, twice
  with an EMA).

Then core-hours per run = rounds x round + evaluations x evaluation + Inception, for the rounds each run still
has to go (``--out``: finished runs cost nothing, a cut-off run continues from its checkpoint's round).
Printed apart, once per machine: the real images' Inception features (as many as the generated ones per
scope; cached by the first run, so an upper bound). Not in the estimate: the classifier's training (cached
per machine), Python's start-up and the checkpoints (together about 10-15% of a short run's CPU time), and
a VAE's last-evaluation extras (the IW bound with ``metrics.iw_samples``, the anomaly scores), which the
script names where they apply. Every figure is this machine's, measured in this run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from datamodules import FederatedDataModule  # noqa: E402
from fedgen_pl.config import load_config  # noqa: E402
from fedgen_pl.metrics.evaluator import build_evaluator, inception_samples, use_inception  # noqa: E402
from fedgen_pl.metrics.inception import load_inception  # noqa: E402
from fedgen_pl.metrics.generation import inception_features  # noqa: E402
from fedgen_pl.models import model_class  # noqa: E402
from fedgen_pl.resume import load_checkpoint  # noqa: E402
from fedgen_pl.errors import InputError  # noqa: E402
from fedgen_pl.table import check_selection, run_dir_for, runs_for  # noqa: E402
from fedgen_pl.train import resolve_precision  # noqa: E402


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def build(cfg):
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    cfg.trainer.precision = resolve_precision(cfg, datamodule.spec)       # `auto` as a run on this machine
    system = model_class(cfg.model.name)(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())
    system.attach_data(datamodule)
    return system, datamodule


def round_cost(system, precision: str, rounds: int) -> float:
    """Core-seconds per round: whole rounds of the clock's events and the cloud's aggregation."""
    optimizers = system.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def run(n: int) -> None:
        done = system.round + n
        while system.round < done:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                system.step_event(*optimizers)
            if system.round_complete:
                system.end_round()

    run(1)                                          # warm-up: first-call allocations
    return cpu_seconds(lambda: run(rounds)) / rounds


def inception_cost(precision: str, image_shape: tuple, images: int = 32) -> float:
    """Core-seconds per image through the Inception network at ``precision``, on images of the run's size."""
    network = load_inception(precision)
    x = torch.rand(images, *image_shape) * 2 - 1
    inception_features(network, x[:4], torch.device("cpu"))      # warm-up
    return cpu_seconds(lambda: inception_features(network, x, torch.device("cpu"))) / images


def remaining_rounds(run_dir: Path, rounds: int) -> int:
    """Rounds a run still has to train: none when finished, the rest after its checkpoint when cut off."""
    if (run_dir / "summary.json").is_file():
        return 0
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        _, checkpoint = load_checkpoint(run_dir, command="estimate")
        return max(rounds - int(checkpoint["federation_state"]["round"]), 0)
    return rounds


def core_hours(rounds_left: int, eval_every: int, per_round: float, per_eval: float, last_eval_extra: float) -> float:
    """A run's core-hours for ``rounds_left`` rounds: every round, an evaluation every ``eval_every`` rounds and
    at the last round (once when it falls on one; the end's Inception images on top, ``last_eval_extra``
    core-seconds); nothing when finished."""
    if rounds_left <= 0:
        return 0.0
    evaluations = -(-rounds_left // eval_every)         # ceil: the last round's evaluation is one of them
    return (rounds_left * per_round + evaluations * per_eval + last_eval_extra) / 3600


def column_cost(cfg, rounds: int) -> dict:
    """Core-seconds of one column, measured: a round, a periodic evaluation, the last evaluation's Inception
    images (and, once per machine, the real images' features)."""
    torch.manual_seed(0)
    system, datamodule = build(cfg)
    per_round = round_cost(system, str(cfg.trainer.precision), rounds)
    if len(datamodule.spec.data_shape) == 1:           # the Gaussian grid: its own metrics, no networks
        from callbacks.grid_metrics import GaussianGridMetrics

        grid = GaussianGridMetrics(1, cfg.metrics.grid_samples_per_label, cfg.data.gaussian_std)
        return {"round": per_round, "evaluation": cpu_seconds(lambda: grid.evaluate(system)), "per_image": 0.0,
                "last_extra": 0.0, "real_stats": 0.0, "likelihood": False}
    inception = use_inception(cfg, torch.device("cpu"))
    cfg.metrics.inception = False        # the real Inception statistics are timed per image, not computed
    evaluator = build_evaluator(cfg, datamodule, torch.device("cpu"))
    per_eval = cpu_seconds(lambda: evaluator.evaluate_model(system, inception=False))
    per_image = inception_cost(str(cfg.metrics.inception_precision), tuple(datamodule.spec.data_shape)) \
        if inception else 0.0
    scopes = 1 if cfg.metrics.inception_scopes == "global" else 1 + datamodule.spec.num_communities
    images = inception_samples(cfg) * scopes
    return {"round": per_round, "evaluation": per_eval, "per_image": per_image,
            "last_extra": images * (2 if getattr(system, "has_ema", False) else 1) * per_image,
            "real_stats": images * per_image, "likelihood": hasattr(system, "likelihood_metrics")}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", required=True)
    parser.add_argument("--schedule", default="full")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--splits", nargs="*", default=[])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--out", default=None, help="the table's --out: count only what its runs still have to do")
    parser.add_argument("--rounds", type=int, default=2, help="rounds timed per column (after one warm-up round)")
    parser.add_argument("overrides", nargs="*", help="key=value for every run, as for fedgen table")
    args = parser.parse_args(argv)
    try:                # an unknown column would be left out of the estimate without a word
        check_selection(args.tables, args.splits, args.methods)
    except InputError as err:
        parser.exit(2, f"fedgen: {err}\n")

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}; core-seconds measured with time.process_time")
    print("| table | split | column | precision | round (core-s) | evaluation (core-s) | Inception per image "
          "(core-s) | runs left | rounds left | core-hours left |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total, real_stats = 0.0, 0.0
    for table in args.tables:
        columns: dict[tuple, list] = {}
        for key, overrides in runs_for(table, args.schedule, args.seeds, args.overrides, tuple(args.splits),
                                       args.methods):
            columns.setdefault(key[:3], []).append((key, overrides))
        for (table_, split, column), runs in columns.items():
            cfg = load_config([*runs[0][1], "trainer.progress_bar=false"])
            rounds = int(cfg.federation.global_rounds)
            left = [remaining_rounds(run_dir_for(Path(args.out), key), rounds) if args.out else rounds
                    for key, _ in runs]
            if not any(left):          # finished: the precision its runs recorded, not `auto` unresolved
                saved = run_dir_for(Path(args.out), runs[0][0]) / "config.yaml"
                precision = OmegaConf.load(saved).trainer.precision if saved.is_file() else "–"
                print(f"| {table_} | {split} | {column} | {precision} | – | – | – | 0 | 0 | 0 |")
                continue
            cost = column_cost(cfg, args.rounds)
            hours = sum(core_hours(n, int(cfg.metrics.eval_every), cost["round"], cost["evaluation"],
                                   cost["last_extra"]) for n in left)
            total += hours
            real_stats = max(real_stats, cost["real_stats"] / 3600)
            extra = "" if not cost["likelihood"] else \
                " (+ the IW bound and anomaly scores at the end)" if cfg.metrics.anomaly_data else " (+ the IW bound at the end)"
            print(f"| {table_} | {split} | {column} | {cfg.trainer.precision} | {cost['round']:.1f} | "
                  f"{cost['evaluation']:.1f} | {cost['per_image']:.3f} | {sum(1 for n in left if n)} | {sum(left)} | "
                  f"{hours:.1f}{extra} |")
    print(f"\nTotal: {total:.1f} core-hours ({total / 2:.1f} hours of a 2-core machine running two runs at a time).")
    if real_stats:
        print(f"Once per machine and dataset, if not cached: up to {real_stats:.2f} core-hours of real Inception features.")
    return total


if __name__ == "__main__":
    main()
