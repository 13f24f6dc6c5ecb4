"""The ``fedgen`` command.

    fedgen train [key=value ...]          train one run (see configs/default.yaml for every key)
    fedgen config [key=value ...]         print the resolved configuration without training
    fedgen eval CHECKPOINT                every metric of a saved run -> metrics.json beside it
    fedgen sample CHECKPOINT --n N        N generated samples and labels -> npz and a PNG grid
    fedgen table [--schedule quick|full]  run the paper's tables' configurations, print them as Markdown
    fedgen report RUN_DIR [RUN_DIR ...]   an offline HTML report comparing runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from omegaconf import OmegaConf

from fedgen_pl.config import load_config
from fedgen_pl.errors import InputError, RunStopped, release_held_logs


def _train(args) -> int:
    from fedgen_pl.resume import load_train_config

    cfg = load_train_config(args.overrides)
    from fedgen_pl.train import train  # heavy imports only once the config is valid

    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\nfinished {summary['rounds']} rounds ({summary['iterations']} local iterations) "
          f"in {summary['wall_time_s']:.1f} s")
    for key, value in summary["metrics"].items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    print(run_dir)
    return 0


def _eval(args) -> int:
    from fedgen_pl.evaluate import evaluate_checkpoint

    metrics, path = evaluate_checkpoint(args.checkpoint, args.overrides)
    for key, value in metrics.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    print(path)
    return 0


def _sample(args) -> int:
    from fedgen_pl.evaluate import sample_checkpoint

    for path in sample_checkpoint(args.checkpoint, args.n, args.out, args.seed, args.ema):
        print(path)
    return 0


def table_names() -> list[str]:
    """The tables ``fedgen table`` knows: one YAML file each in configs/tables/."""
    from fedgen_pl.config import CONFIG_DIR

    return sorted(path.stem for path in (CONFIG_DIR / "tables").glob("*.yaml"))


def _table(args) -> int:
    from fedgen_pl.errors import check_writable_dir
    from fedgen_pl.table import main as table

    if args.status:
        from pathlib import Path

        from fedgen_pl.errors import ConfigError
        from fedgen_pl.table import check_selection, status

        if not args.out:
            raise ConfigError("needs the table's --out (the directory whose runs to report)", where="--status")
        check_selection(args.tables, args.splits, args.methods)
        print(status(Path(args.out), args.schedule, args.seeds, args.tables, args.overrides, tuple(args.splits or ()),
                     args.methods))
        return 0
    if args.out:
        check_writable_dir(args.out, "--out")
    print(table(args.schedule, args.seeds, args.tables, args.out, args.overrides, args.splits, args.methods,
                train_missing=not args.no_train, jobs=args.jobs))
    return 0


def _report(args) -> int:
    from fedgen_pl.report import build_report

    out = args.out or (f"{args.runs[0].rstrip('/')}/report.html" if len(args.runs) == 1 else "report.html")
    print(build_report(args.runs, out))
    return 0


def _config(args) -> int:
    from fedgen_pl.config import KEYS, defaults_yaml

    if (args.defaults or args.keys) and args.overrides:
        raise InputError(f"--defaults and --keys print the key table and take no overrides, got "
                         f"{' '.join(args.overrides)}; drop them, or drop the flag to see a resolved configuration",
                         where="fedgen config")
    if args.defaults:              # what configs/default.yaml holds (generated from the key table)
        print(defaults_yaml(), end="")
        return 0
    if args.keys:                  # the key table: name, type, default, allowed values or range, doc
        for key in KEYS:
            allowed = ", ".join(map(str, key.choices)) or " ".join(
                f"{op} {bound}" for op, bound in ((">=", key.ge), (">", key.gt), ("<=", key.le), ("<", key.lt))
                if bound is not None)
            kind = key.type.__name__ if isinstance(key.type, type) else str(key.type).replace("typing.", "")
            print(f"{key.name}\t{kind}\t{key.default}\t{allowed or '-'}\t{key.doc}")
        return 0
    cfg = load_config(args.overrides)
    from fedgen_pl.train import resolve_names     # the registries (models, datasets): heavy imports

    resolve_names(cfg)
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests capture it). While a command
    checks its input the lines are held back: bad input prints its one line alone, and once the checks pass
    (``fedgen_pl.errors.release_held_logs``, or the command's end) the held lines follow in order."""

    held: list | None = None

    # (not hold/release: logging.Handler's release() is its lock's)
    def hold_back(self) -> None:
        self.held = []

    def let_through(self) -> None:
        held, self.held = self.held, None
        for record in held or []:
            super().emit(record)

    def drop_held(self) -> None:
        self.held = None

    def emit(self, record) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging() -> None:
    """fedgen's own progress messages (data sources, caches) go to stderr at INFO."""
    log = logging.getLogger("fedgen")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[fedgen] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _deploy_local(args) -> int:
    from fedgen_pl.deploy import deploy_local

    print(deploy_local(args.overrides))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse in the project's one-line error form (exit 2), instead of its usage block."""

    def error(self, message: str):
        print(f"fedgen: usage error ({self.prog}): {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    parser = _Parser(prog="fedgen", description="Federated generative models in PyTorch Lightning")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, fn, text in (("train", _train, "train one run"),
                           ("deploy-local", _deploy_local, "train one run through a local Flower deployment "
                            "(a SuperLink and one SuperNode per device on 127.0.0.1)"),
                           ("config", _config, "print the resolved configuration")):
        sub = commands.add_parser(name, help=text, description=f"{text}; overrides are key=value "
                                  "(e.g. experiment=gaussian_grid seed=3 federation.local_iters=20)")
        sub.add_argument("overrides", nargs="*", help="key=value configuration overrides")
        if name == "config":
            sub.add_argument("--defaults", action="store_true", help="print configs/default.yaml as generated "
                             "from the key table (fedgen_pl/config.py KEYS)")
            sub.add_argument("--keys", action="store_true", help="print every key: name, type, default, allowed "
                             "values or range, doc (tab-separated)")
        sub.set_defaults(fn=fn)
    sub = commands.add_parser("eval", help="compute every metric of a checkpoint",
                              description="compute every metric of a saved run and write metrics.json beside "
                                          "the checkpoint; overrides (key=value) change metric settings, e.g. "
                                          "metrics.inception=true metrics.inception_samples=10000")
    sub.add_argument("checkpoint", help="a .ckpt file, or a run directory (uses checkpoints/last.ckpt)")
    sub.add_argument("overrides", nargs="*", help="metrics.* overrides")
    sub.set_defaults(fn=_eval)
    sub = commands.add_parser("sample", help="export generated samples of a checkpoint",
                              description="export N samples of the global generator (labels cycling through the "
                                          "label space) as an npz (x, y, label_names) and a PNG grid")
    sub.add_argument("checkpoint", help="a .ckpt file, or a run directory (uses checkpoints/last.ckpt)")
    sub.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    sub.add_argument("--out", default=None, help="output stem (default: samples_<N> beside the checkpoint)")
    sub.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    sub.add_argument("--ema", action="store_true", help="sample the EMA of the global model (a run with model.ema_decay > 0)")
    sub.set_defaults(fn=_sample)
    sub = commands.add_parser("table", help="reproduce the paper's tables",
                              description="run every configuration behind the paper's Table 1, Table 2 and the "
                                          "Gaussian-grid comparison (reusing finished runs) and print Markdown tables, "
                                          "with the paper's claims and the literature's targets their cells decide "
                                          "(configs/tables/*.yaml, fedgen_pl/verdicts.py)")
    sub.add_argument("--schedule", choices=("quick", "full"), default="quick")
    sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub.add_argument("--tables", nargs="+", choices=table_names(),
                     default=["table1", "table2", "grid"])
    sub.add_argument("--splits", nargs="+", default=None,
                     help="Table 1 and 2: iid, noniid; the literature table: mnist, fmnist (default: all of a table's)")
    sub.add_argument("--methods", nargs="+", default=None, metavar="COLUMN",
                     help="only these columns, by name (e.g. 'FR sync' 'M-D GAN'; default all)")
    sub.add_argument("--out", default=None, help="runs and table.md go here (default runs/table-<schedule>-<time>)")
    sub.add_argument("--no-train", action="store_true",
                     help="only print the table of finished runs; refuse if one has not finished (nothing is trained)")
    sub.add_argument("--status", action="store_true",
                     help="only say where each run under --out stands (finished, training at round r, cut off, "
                          "not started); trains and writes nothing")
    sub.add_argument("--jobs", type=int, default=1,
                     help="train this many runs at once, each in its own process with this process's threads "
                          "divided among them (default 1: one after another)")
    sub.add_argument("overrides", nargs="*", help="key=value overrides applied to every run, e.g. "
                                                  "federation.fake_labels=community")
    sub.set_defaults(fn=_table)
    sub = commands.add_parser("report", help="write an offline HTML report of runs",
                              description="one self-contained HTML file: metric curves against rounds and "
                                          "virtual time (mean ± std over seeds), aggregation weights, partition "
                                          "histograms, latest sample grids and the config differences")
    sub.add_argument("runs", nargs="+", help="run directories")
    sub.add_argument("--out", default=None, help="HTML file (default: RUN/report.html for one run, else report.html)")
    sub.set_defaults(fn=_report)
    args, unknown = parser.parse_known_args(argv)
    if unknown:                    # said by the command's own parser: its name and its --help
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    handlers = [h for h in logging.getLogger("fedgen").handlers if isinstance(h, _StderrHandler)]
    for handler in handlers:
        handler.hold_back()
    try:
        code = args.fn(args)
    except InputError as err:
        for handler in handlers:      # what was logged while checking the input is noise beside the error
            handler.drop_held()
        print(f"fedgen: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:         # non-finite values (3), a full disk (4)
        release_held_logs()
        print(f"fedgen: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:           # the reader left (`fedgen table --status | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BaseException:
        release_held_logs()           # an internal error keeps everything that led to it
        raise
    release_held_logs()
    return code


if __name__ == "__main__":
    sys.exit(main())
