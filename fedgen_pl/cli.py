"""The ``fedgen`` command.

    fedgen train [key=value ...]      train one run (see configs/default.yaml for every key)
    fedgen config [key=value ...]     print the resolved configuration without training
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from omegaconf import OmegaConf

from fedgen_pl.config import ConfigError, load_config


def _train(args) -> int:
    cfg = load_config(args.overrides)
    from fedgen_pl.train import train  # heavy imports only once the config is valid

    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\nfinished {summary['rounds']} rounds ({summary['iterations']} local iterations) "
          f"in {summary['wall_time_s']:.1f} s")
    for key, value in summary["metrics"].items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    print(run_dir)
    return 0


def _config(args) -> int:
    print(OmegaConf.to_yaml(load_config(args.overrides)), end="")
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests capture it)."""

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


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    parser = argparse.ArgumentParser(prog="fedgen", description="Federated generative models in PyTorch Lightning")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("train", _train, "train one run"),
                           ("config", _config, "print the resolved configuration")):
        sub = commands.add_parser(name, help=text, description=f"{text}; overrides are key=value "
                                  "(e.g. experiment=gaussian_grid seed=3 federation.local_iters=20)")
        sub.add_argument("overrides", nargs="*", help="key=value configuration overrides")
        sub.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"fedgen: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
