"""``fedgen report RUN_DIR [RUN_DIR ...]``: one self-contained HTML file comparing runs offline.

Sections: metric curves against rounds and against virtual time (runs overlaid; runs whose configs
differ only by ``seed`` are drawn as mean ± std), the cloud's aggregation weights per round, each run's
partition histogram and latest sample grids, and the configuration keys that differ between runs.
Everything is read from the run directories (``metrics.csv``, ``config.yaml``, ``plots/``); figures
are PNGs embedded as base64, each with its data points in a table beside it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from fedgen_pl.errors import InputError

from fedgen_pl.plots import plt

# Keys that say where or how a run was launched, not what it computed.
LAUNCH_KEYS = ("seed", "output_dir", "resume")
NOT_CURVES = ("step", "round", "virtual_time")


class Run:
    def __init__(self, path: Path):
        self.path = Path(path)
        for name in ("metrics.csv", "config.yaml"):
            if not (self.path / name).is_file():
                raise InputError(f"not a run directory (no {name}); pass a directory `fedgen train` wrote",
                                 where=str(self.path))
        self.name = self.path.name
        self.config = OmegaConf.to_container(OmegaConf.load(self.path / "config.yaml"), resolve=True)
        self.config.pop("schedules", None)
        with open(self.path / "metrics.csv", newline="") as f:
            self.rows = list(csv.DictReader(f))

    def series(self, key: str, x: str) -> list[tuple[float, float]]:
        """(x, value) for every row that has ``key``; a value logged twice at one x keeps the last."""
        points = {}
        for row in self.rows:
            if row.get(key) not in (None, "") and row.get(x) not in (None, ""):
                points[float(row[x])] = float(row[key])
        return sorted(points.items())

    def keys(self) -> list[str]:
        return [k for k in (self.rows[0].keys() if self.rows else []) if k not in NOT_CURVES]

    def group_key(self) -> str:
        return repr(sorted(_flatten({k: v for k, v in self.config.items() if k not in LAUNCH_KEYS}).items()))


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_difference(runs: list[Run]) -> list[tuple[str, list]]:
    """(key, value per run) for every configuration key whose values differ between runs."""
    flats = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats))
    return [(k, [f.get(k, "–") for f in flats]) for k in keys
            if k not in ("output_dir", "resume") and len({repr(f.get(k, "–")) for f in flats}) > 1]


def groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only by seed (and where they were written) form one group."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.group_key()].append(run)
    return list(by_key.values())


def mean_std(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float, float]]:
    """(x, mean, std) over the x values every curve has (std 0 for a single curve)."""
    common = set.intersection(*[{x for x, _ in c} for c in curves]) if curves else set()
    values = [dict(c) for c in curves]
    out = []
    for x in sorted(common):
        ys = [v[x] for v in values]
        out.append((x, statistics.mean(ys), statistics.stdev(ys) if len(ys) > 1 else 0.0))
    return out


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _label(group: list[Run]) -> str:
    if len(group) == 1:
        return group[0].name
    seeds = ", ".join(str(r.config.get("seed")) for r in group)
    return f"{group[0].name} … (mean ± std over seeds {seeds})"


def curve_figure(key: str, run_groups: list[list[Run]]) -> tuple[str, list[list]]:
    """One metric against rounds and against virtual time; returns the PNG and its data rows."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    rows = []
    for group in run_groups:
        label = _label(group)
        for ax, x in zip(axes, ("round", "virtual_time")):
            curves = [c for c in (r.series(key, x) for r in group) if c]
            if not curves:
                continue
            stats = mean_std(curves)
            xs, means, stds = [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats]
            (line,) = ax.plot(xs, means, label=label, marker="." if len(xs) < 30 else None)
            if len(curves) > 1:
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=line.get_color(), alpha=0.2)
            if x == "round":
                rows += [[label, f"{a:g}", f"{m:.6g}", f"{s:.3g}"] for a, m, s in stats]
    for ax, x in zip(axes, ("round", "virtual time (ticks)")):
        ax.set_xlabel(x)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _png(fig), rows


def weights_figure(run: Run) -> tuple[str | None, list[list]]:
    keys = sorted((k for k in run.keys() if k.startswith("cloud/weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if not keys:
        return None, []
    fig, ax = plt.subplots(figsize=(10, 2.8))
    rows = []
    for key in keys:
        points = run.series(key, "round")
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key.split("/")[1])
        rows += [[key, f"{r:g}", f"{w:.4f}"] for r, w in points[-3:]]
    ax.set_xlabel("round")
    ax.set_ylabel("a_k")
    ax.set_title(f"{run.name}: cloud aggregation weights", fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(keys), 9))
    ax.grid(alpha=0.3)
    return _png(fig), rows


def _file_png(path: Path) -> str | None:
    return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data(rows: list[list], header: list[str]) -> str:
    return f"<details><summary>data ({len(rows)} points)</summary>{_table(header, rows)}</details>"


def _curve_keys(runs: list[Run]) -> list[str]:
    keys = []
    for run in runs:
        keys += [k for k in run.keys() if k not in keys]
    order = ("global/", "community_", "train/", "cloud/community_loss", "bytes/", "faults/")
    keys = [k for k in keys if not k.startswith("cloud/weight_")]
    return sorted(keys, key=lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), len(order)), k))


def build_report(run_dirs: list[Path], out: Path) -> Path:
    runs = [Run(p) for p in run_dirs]
    run_groups = groups(runs)
    parts = [f"<h1>fedgen-pl report</h1><p>{len(runs)} runs, {len(run_groups)} groups; written "
             f"{datetime.now():%Y-%m-%d %H:%M}. Runs: "
             + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>"]

    parts.append('<h2 id="curves">Metric curves</h2><p>Left: against global rounds; right: against virtual '
                 "time. Runs whose configurations differ only by seed are drawn as mean ± std.</p>")
    for key in _curve_keys(runs):
        png, rows = curve_figure(key, run_groups)
        if rows:
            parts.append(f'<div class="figure">{_img(png, key)}{_data(rows, ["run", "round", "mean", "std"])}</div>')

    parts.append('<h2 id="weights">Aggregation weights</h2>')
    for run in runs:
        png, rows = weights_figure(run)
        if png:
            parts.append(f'<div class="figure">{_img(png, run.name + " weights")}'
                         f'{_data(rows, ["weight", "round", "value"])}</div>')

    parts.append('<h2 id="partitions">Partitions</h2>')
    for run in runs:
        png = _file_png(run.path / "plots" / "partition_histogram.png")
        if png:
            parts.append(f"<h3>{html.escape(run.name)}</h3>{_img(png, run.name + ' partition')}")

    parts.append('<h2 id="samples">Latest samples</h2>')
    for run in runs:
        grids = sorted((run.path / "plots").glob("samples_*.png")) + sorted((run.path / "plots").glob("global_samples.png"))
        if grids:
            parts.append(f"<h3>{html.escape(run.name)}</h3>" + "".join(_img(_file_png(g), g.stem) for g in grids))

    parts.append('<h2 id="config">Configuration differences</h2>')
    difference = config_difference(runs)
    parts.append(_table(["key", *[r.name for r in runs]], [[k, *v] for k, v in difference]) if difference
                 else "<p>The runs' configurations are identical.</p>")

    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             ".figure{margin-bottom:1.5em}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>fedgen-pl report</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out

