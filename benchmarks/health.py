"""Health bars and seed groups of quick runs, and whether one precision ends level with another
(fedgen_pl/health.py has the rules).

    .venv/bin/python benchmarks/health.py RUN_DIR [RUN_DIR ...] [--reference 32-true]

    .venv/bin/python benchmarks/health.py RUN_DIR ... --by model.d_lr --reference 'bf16-mixed model.d_lr=0.001'

Prints one Markdown row per run (global `is_classifier` / `fid_classifier` / `acc` of the raw generator and
the EMA's FID / Acc at every evaluation, class consistency in Acc's place for the label-related models, the
share of saturated discriminator losses with the run's generator loss, and the health bar), then per
experiment and precision (and ``--by``'s key's value) the final FID and Acc as mean ± std over seeds, then for
every experiment run at the reference setting and at another whether the other ends level with it, raw and
EMA.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedgen_pl.config import KEY  # noqa: E402
from fedgen_pl.convergence import fid_curve  # noqa: E402
from fedgen_pl.health import RUN_RECORDS, SATURATION_AFTER, level, run_health, saturated_share  # noqa: E402


def read_run(run_dir: Path, by: str | None = None) -> dict:
    """One run's curves and verdicts; its ``setting`` is its precision, and with ``by`` that key's value."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    curves = {name: fid_curve(run_dir, name) for name in (
        "global/is_classifier", "global/fid_classifier", "global/acc", "ema/global/fid_classifier", "ema/global/acc")}
    for scope in ("global/", "ema/global/"):          # the label-related models: class consistency in Acc's place
        if not curves[scope + "acc"][0]:
            curves[scope + "acc"] = fid_curve(run_dir, scope + "class_consistency")
    sync = cfg.federation["update"] != "async"      # ["update"]: .update is the mapping's method
    with open(run_dir / "metrics.csv", newline="") as f:
        logged = [(int(float(row["step"])), float(row["train/d_loss"])) for row in csv.DictReader(f)
                  if row.get("train/d_loss") not in (None, "")]
    # A run recorded before ``by`` existed trained as its default does (a new key's default keeps old behaviour).
    value = OmegaConf.select(cfg, by, default=KEY[by].default if by in KEY else None) if by else None
    setting = str(cfg.trainer.precision) + (f" {by}={value}" if by else "")
    return {"experiment": summary["experiment"], "precision": setting, "seed": int(cfg.seed),
            "curves": curves, "sync": sync, "gan_loss": str(cfg.model.gan_loss),
            "saturated": saturated_share([s for s, _ in logged], [loss for _, loss in logged])
            if any(step > SATURATION_AFTER for step, _ in logged) else None,      # a short run: not measured
            "healthy": run_health(run_dir)}


def series(values: list[float], digits: int) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def mean_std(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", default="32-true", help="the precision the others are compared with (with "
                        "--by: the setting, e.g. 'bf16-mixed model.d_lr=0.001')")
    parser.add_argument("--by", default=None, help="a config key whose value also sets the groups, e.g. model.d_lr")
    args = parser.parse_args()
    for run_dir in args.runs:      # before anything is printed: a glob that caught a log file says so
        missing = [n for n in RUN_RECORDS if not (run_dir / n).is_file()]
        if missing:
            print(f"fedgen: not a finished run directory ({run_dir}): it lacks {', '.join(missing)}; pass the "
                  f"directories that `fedgen train` finished", file=sys.stderr)
            sys.exit(2)
    runs = sorted((read_run(r, args.by) for r in args.runs),
                  key=lambda r: (r["experiment"], r["precision"], r["seed"]))
    setting = "precision" + (f", {args.by}" if args.by else "")

    print(f"| experiment | {setting} | seed | IS | FID | Acc | EMA FID | EMA Acc | D saturated (G loss) | bar |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        c = run["curves"]
        bar = ("–" if run["healthy"] is None else "met" if run["healthy"] else "**not met**") + (
            "" if run["sync"] else " (async: no final bar)")
        print(f"| `{run['experiment']}` | `{run['precision']}` | {run['seed']} | {series(c['global/is_classifier'][1], 2)} | "
              f"{series(c['global/fid_classifier'][1], 1)} | {series(c['global/acc'][1], 3)} | "
              f"{series(c['ema/global/fid_classifier'][1], 1)} | {series(c['ema/global/acc'][1], 3)} | "
              f"{'–' if run['saturated'] is None else format(run['saturated'], '.2f')} ({run['gan_loss']}) | {bar} |")

    groups = defaultdict(list)
    for run in runs:
        groups[run["experiment"], run["precision"]].append(run)
    final = {key: {m: [r["curves"][m][1][-1] for r in members]
                   for m in ("global/fid_classifier", "ema/global/fid_classifier", "global/acc")}
             for key, members in groups.items()}
    print(f"\n| experiment | {setting} | seeds | final FID | final EMA FID | final Acc | health bar met |")
    print("|---|---|---|---|---|---|---|")
    for (experiment, precision), members in groups.items():
        f = final[experiment, precision]
        print(f"| `{experiment}` | `{precision}` | {', '.join(str(r['seed']) for r in members)} | "
              f"{mean_std(f['global/fid_classifier'])} | {mean_std(f['ema/global/fid_classifier'])} | "
              f"{mean_std(f['global/acc'], 3)} | {sum(r['healthy'] is True for r in members)} of {len(members)} |")

    print()
    for (experiment, precision) in groups:
        if precision == args.reference or (experiment, args.reference) not in groups:
            continue
        for metric, name in (("global/fid_classifier", "FID"), ("ema/global/fid_classifier", "EMA FID")):
            values, reference = final[experiment, precision][metric], final[experiment, args.reference][metric]
            if len(reference) < 2:
                print(f"`{experiment}` {name}: one `{args.reference}` seed, no spread to compare with")
                continue
            ok, gap, spread = level(values, reference)
            print(f"`{experiment}` final {name}: `{precision}` {statistics.fmean(values):.1f} against `{args.reference}` "
                  f"{statistics.fmean(reference):.1f} ({len(values)} and {len(reference)} seeds): gap {gap:.1f}, "
                  f"reference std {spread:.1f}: **{'level' if ok else 'not level'}**")


if __name__ == "__main__":
    main()
