"""``fedgen report RUN_DIR [RUN_DIR ...]``: one self-contained HTML file comparing runs offline.

Sections: a table of final metrics per run or group, metric curves against rounds and against virtual
time (runs overlaid; runs whose configs differ only in keys that cannot change results, such as
``seed``, ``trainer.*`` or ``metrics.eval_every``, are drawn as mean ± std, the band clipped to the
metric's range), the cloud's aggregation weights per round, each distinct partition histogram once,
the latest sample grids, and the configuration keys that differ between runs. Curves that are zero in
every run are left out, and metrics of different evaluation classifiers (another label space) are
never drawn on one axis.
Everything is read from the run directories (``metrics.csv``, ``config.yaml``, ``plots/``); figures
are PNGs embedded as base64, each with its data points in a table beside it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from fedgen_pl.config import flatten
from fedgen_pl.errors import InputError, check_writable_dir
from fedgen_pl.plots import plt

# Keys that say where or how a run was launched, logged or evaluated, not what it computed: runs that
# differ only in these are seeds of one setting.
LAUNCH_KEYS = ("seed", "output_dir", "resume", "trainer.", "logger.", "metrics.eval_every", "plugins")
NOT_CURVES = ("step", "round", "virtual_time")
# Metrics computed with the scenario's classifier: comparable only between runs of one label space.
CLASSIFIER_METRICS = ("fid_classifier", "kid_classifier", "is_classifier", "acc", "class_consistency")


def _launch_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in LAUNCH_KEYS)


def metric_range(key: str) -> tuple[float | None, float | None]:
    """The values a metric can take, to clip mean ± std bands: shares and weights in [0, 1], distances,
    scores, counts and bytes >= 0; KID (an unbiased estimate) and losses unbounded."""
    name = key.rsplit("/", 1)[-1]
    if any(s in name for s in ("share", "acc", "consistency", "weight")):
        return 0.0, 1.0
    if name.startswith(("fid", "is_", "modes")) or key.startswith(("bytes/", "faults/")):
        return 0.0, None
    return None, None


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
        summary = self.path / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.is_file() else None

    @property
    def label_space(self) -> str:
        """Which evaluation classifier scored this run: its datasets, classes and label space."""
        communities = self.config.get("federation", {}).get("communities", [])
        data = sorted({(c.get("data"), tuple(c.get("classes") or ())) for c in communities})
        names = ", ".join(d if not classes else f"{d}{list(classes)}" for d, classes in data)
        return f"{names} ({self.config.get('data', {}).get('label_space')})"

    def final_metrics(self) -> dict[str, float]:
        """The last value of every global metric (from summary.json when the run finished)."""
        if self.summary and self.summary.get("metrics"):
            return {k if "/" in k else f"global/{k}": float(v) for k, v in self.summary["metrics"].items()
                    if isinstance(v, (int, float))}
        out = {}
        for row in self.rows:
            out.update({k: float(v) for k, v in row.items() if k.startswith("global/") and v not in (None, "")})
        return out

    def final_round(self) -> int:
        rounds = [float(r["round"]) for r in self.rows if r.get("round") not in (None, "")]
        return int(max(rounds)) if rounds else 0

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
        return repr(sorted((k, v) for k, v in flatten(self.config).items() if not _launch_key(k)))


def config_difference(runs: list[Run]) -> list[tuple[str, list]]:
    """(key, value per run) for every configuration key whose values differ between runs."""
    flats = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats))
    return [(k, [f.get(k, "–") for f in flats]) for k in keys
            if k not in ("output_dir", "resume") and len({repr(f.get(k, "–")) for f in flats}) > 1]


def final_table(run_groups: list[list[Run]]) -> str:
    """Final global metrics, one row per run or group (mean ± std over its seeds)."""
    keys = []
    for group in run_groups:
        for run in group:
            keys += [k for k in run.final_metrics() if k not in keys]
    rows = []
    for group in run_groups:
        finals = [r.final_metrics() for r in group]
        cells = []
        for key in keys:
            values = [f[key] for f in finals if key in f]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}")
        rounds = sorted({r.final_round() for r in group})
        rows.append([_label(group), "/".join(map(str, rounds)), group[0].label_space, *cells])
    return _table(["run", "round", "classifier's label space", *keys], rows)


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


def curve_figure(key: str, run_groups: list[list[Run]], title: str | None = None) -> tuple[str, list[list]]:
    """One metric against rounds and against virtual time; returns the PNG and its data rows (every
    point against rounds)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    low, high = metric_range(key)
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
                lower = [m - s if low is None else max(low, m - s) for m, s in zip(means, stds)]
                upper = [m + s if high is None else min(high, m + s) for m, s in zip(means, stds)]
                ax.fill_between(xs, lower, upper, color=line.get_color(), alpha=0.2)
            if x == "round":
                rows += [[label, f"{a:g}", f"{m:.6g}", f"{s:.3g}"] for a, m, s in stats]
    for ax, x in zip(axes, ("round", "virtual time (ticks)")):
        ax.set_xlabel(x)
        ax.set_title(title or key, fontsize=9)
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
        rows += [[key, f"{r:g}", f"{w:.4f}"] for r, w in points]
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
    return f"<details><summary>data (all {len(rows)} points)</summary>{_table(header, rows)}</details>"


def _all_zero(key: str, runs: list[Run]) -> bool:
    values = [v for run in runs for _, v in run.series(key, "round")]
    return bool(values) and all(v == 0 for v in values)


def _curve_keys(runs: list[Run]) -> list[str]:
    keys = []
    for run in runs:
        keys += [k for k in run.keys() if k not in keys]
    order = ("global/", "community_", "train/", "cloud/community_loss", "bytes/", "faults/")
    keys = [k for k in keys if not k.startswith("cloud/weight_")]
    return sorted(keys, key=lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), len(order)), k))


def build_report(run_dirs: list[Path], out: Path) -> Path:
    runs = [Run(p) for p in run_dirs]             # the runs first: a wrong run path is the likelier mistake
    check_writable_dir(Path(out).expanduser().parent, "--out")
    while len({r.name for r in runs}) < len(runs):      # same directory names (seed0, seed1 under each method)
        depth = max(len(Path(r.name).parts) for r in runs) + 1
        for run in runs:
            run.name = "/".join(run.path.parts[-depth:])
    run_groups = groups(runs)
    parts = [f"<h1>fedgen-pl report</h1><p>{len(runs)} runs, {len(run_groups)} groups; written "
             f"{datetime.now():%Y-%m-%d %H:%M}. Runs: "
             + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>"]
    parts.append('<h2 id="final">Final metrics</h2><p>The last evaluation of every run; a group (runs that differ '
                 "only by seed, or in trainer, logger and evaluation-interval keys) as mean ± std over its "
                 "seeds. Classifier metrics compare only between runs of one label space.</p>"
                 + final_table(run_groups))

    parts.append('<h2 id="curves">Metric curves</h2><p>Left: against global rounds; right: against virtual '
                 "time. Groups are drawn as mean ± std, the band clipped to the metric's range. Curves that are "
                 "zero in every run are left out.</p>")
    spaces = defaultdict(list)
    for group in run_groups:
        spaces[group[0].label_space].append(group)
    skipped = []
    for key in _curve_keys(runs):
        if _all_zero(key, runs):
            skipped.append(key)
            continue
        by_classifier = key.rsplit("/", 1)[-1] in CLASSIFIER_METRICS and len(spaces) > 1
        for space, space_groups in (spaces.items() if by_classifier else [(None, run_groups)]):
            title = key if space is None else f"{key} (classifier over {space})"
            png, rows = curve_figure(key, space_groups, title)
            if rows:
                parts.append(f'<div class="figure">{_img(png, title)}{_data(rows, ["run", "round", "mean", "std"])}'
                             f"</div>")
    if skipped:
        parts.append(f"<p>Zero in every run, not drawn: {', '.join(f'<code>{html.escape(k)}</code>' for k in skipped)}.</p>")

    parts.append('<h2 id="weights">Aggregation weights</h2>')
    for run in runs:
        png, rows = weights_figure(run)
        if png:
            parts.append(f'<div class="figure">{_img(png, run.name + " weights")}'
                         f'{_data(rows, ["weight", "round", "value"])}</div>')

    parts.append('<h2 id="partitions">Partitions</h2>')
    shared: dict[str, list[Run]] = defaultdict(list)       # one figure per distinct histogram
    for run in runs:
        source = run.path / "partition_histogram.csv"
        if (run.path / "plots" / "partition_histogram.png").is_file():
            digest = hashlib.sha256(source.read_bytes() if source.is_file() else run.name.encode()).hexdigest()
            shared[digest].append(run)
    for members in shared.values():
        png = _file_png(members[0].path / "plots" / "partition_histogram.png")
        names = ", ".join(r.name for r in members)
        parts.append(f"<h3>{html.escape(names)}</h3>{_img(png, names + ' partition')}")

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

