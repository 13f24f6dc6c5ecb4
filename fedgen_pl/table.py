"""``fedgen table``: run the configurations behind the paper's tables and print them in its layout.

Table 1 (MNIST + FashionMNIST) and Table 2 (MNIST / inverse MNIST), each i.i.d. and non-i.i.d., and the
Gaussian-grid comparison, and the literature protocol; each table is defined in configs/tables/<table>.yaml.
Every cell is ours as mean ± std over seeds with the paper's number beside it;
every metric names its network. ``key=value`` overrides apply to every run of the table (for example
``federation.fake_labels=community``). Runs whose ``summary.json`` exists are reused, so an interrupted
table continues where it stopped; a run trained with other settings than the table asks for is refused.
Every table records its overrides, schedule, seeds, commit and hardware (``table.md``, ``table.json``), and
names the GAN runs that miss the health bar (fedgen_pl/health.py); they stay in the means.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

from omegaconf import OmegaConf

from fedgen_pl.config import CONFIG_DIR, ConfigError, flatten, load_config, load_yaml, with_defaults
from fedgen_pl.health import run_health
from fedgen_pl.provenance import provenance
from fedgen_pl.resume import resume_config
from fedgen_pl.verdicts import claim_line, claim_record, parse_claims, parse_targets, target_line, target_record

# Every table's definition is YAML (configs/tables/<table>.yaml): each split's experiment, each column's
# settings on top of it (key=value, or an experiment of its own; {split} is the split's name), and the
# published numbers. Nothing about a run's settings is written here.
def tables() -> list[str]:
    """The tables there are: one YAML file each in configs/tables/."""
    return sorted(path.stem for path in (CONFIG_DIR / "tables").glob("*.yaml"))


def definition(table: str) -> dict:
    path = CONFIG_DIR / "tables" / f"{table}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown table '{table}'; available: {', '.join(tables())} (or add "
                          f"configs/tables/{table}.yaml)", where="--tables")
    return OmegaConf.to_container(load_yaml(path))


def methods_of(table: str) -> list[tuple[str, list[str]]]:
    """(column, its overrides) in the table's order."""
    return [(column, list(overrides)) for column, overrides in definition(table)["columns"].items()]


PAPER = {(table, split): numbers for table in tables()
         for split, numbers in definition(table).get("paper", {}).items()}
PRISM = definition("literature")["published"]
LITERATURE_SPLITS = tuple(definition("literature")["splits"])

# Our metric behind each of the paper's rows (the paper does not name its networks).
ROWS = {"IS": "global/is_classifier", "FID": "global/fid_classifier", "Acc": "global/acc",
        "FID (Inception)": "global/fid_inception", "class consistency": "global/class_consistency",
        "KID (Inception)": "global/kid_inception", "FID (Inception), EMA": "ema/global/fid_inception",
        "FID, EMA": "ema/global/fid_classifier", "Acc, EMA": "ema/global/acc",
        "-ELBO": "global/negative_elbo", "-ELBO (IW)": "global/iw_negative_elbo",
        "-ELBO of the device models": "devices/negative_elbo", "anomaly AUROC": "devices/anomaly_auroc",
        "eps": "privacy/epsilon"}
LITERATURE_ROWS = ("FID (Inception)", "FID (Inception), EMA", "KID (Inception)", "FID", "FID, EMA", "Acc", "Acc, EMA")
# Rows after the paper's in Tables 1 and 2, each shown where some run has it (Inception at the full schedule).
EXTRA_ROWS = ("FID (Inception)", "FID (Inception), EMA", "KID (Inception)", "FID, EMA", "Acc, EMA", "class consistency")


SPLITS = ("iid", "noniid")
# Keys that do not change a run's results: a finished run is reused whatever they were. `experiment`
# only names the YAML the settings came from (every setting is compared): a run of
# `experiment=mnist_fmnist_noniid_async` is the table's FR async cell when its settings match.
NEUTRAL_KEYS = ("experiment", "output_dir", "resume", "trainer", "logger", "metrics", "plugins")


def splits_of(table: str, splits: tuple[str, ...]) -> tuple[str, ...]:
    """The splits asked for that the table has (the literature table's splits are its datasets)."""
    own = tuple(definition(table)["splits"])
    chosen = tuple(s for s in splits if s in own)
    return chosen or own


def runs_for(table: str, schedule: str, seeds: list[int], overrides: list[str] = (),
             splits: tuple[str, ...] = SPLITS, methods: list[str] | None = None) -> list[tuple[tuple, list[str]]]:
    """((table, split, column, seed), overrides) for every run the table needs; ``overrides`` come last
    (they win), ``methods`` keeps only those columns."""
    spec = definition(table)
    chosen = [(c, o) for c, o in methods_of(table) if methods is None or c in methods]
    runs = []
    for split in (("grid",) if table == "grid" else splits_of(table, splits)):
        for column, settings in chosen:
            own = [o.format(split=split) for o in settings if o.startswith("experiment=")]
            experiment = own or [f"experiment={spec['splits'][split]}"]
            rest = [o for o in settings if not o.startswith("experiment=")]
            for seed in seeds:
                runs.append(((table, split, column, seed),
                             [*experiment, f"schedule={schedule}", f"seed={seed}", *rest, *overrides]))
    return runs


def _results_config(cfg) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["federation"].get("cloud_lr") == "auto":          # configs written before auto was resolved at load
        plain["federation"]["cloud_lr"] = float(len(plain["federation"]["communities"]))
    return {k: v for k, v in plain.items() if k not in NEUTRAL_KEYS}


def _check_reusable(run_dir: Path, cfg) -> None:
    """A run found in place (finished or cut off) counts for this table only if it has the settings the table
    asks for."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _results_config(with_defaults(OmegaConf.load(saved_path)))    # keys added since take their defaults
    wanted = _results_config(cfg)
    flat_saved = flatten(saved)
    for key, value in flatten(wanted).items():
        if flat_saved.get(key) != value:
            raise ConfigError(f"{run_dir}: this run has {key}={flat_saved.get(key)!r} but the table asks "
                              f"for {value!r}; give the table another --out, or remove the run")


def run_dir_for(root: Path, key: tuple) -> Path:
    table, split, column, seed = key
    return root / table / split / column.replace(" ", "_").replace(".", "") / f"seed{seed}"


def ensure_runs(root: Path, schedule: str, seeds: list[int], tables: list[str], overrides: list[str] = (),
                splits: tuple[str, ...] = SPLITS, methods: list[str] | None = None,
                train_missing: bool = True, jobs: int = 1) -> dict[tuple, dict]:
    """Train every run the tables need (seed by seed, ``jobs`` at a time) and return their summaries; finished
    runs are reused. Every configuration is loaded and checked before the first run starts.
    ``train_missing=False`` (``--no-train``) refuses, before anything is written, when a run has not finished."""
    from fedgen_pl.train import resolve_names, run_in_use, train

    planned, cut_early = [], []
    for table in tables:
        for key, run_overrides in runs_for(table, schedule, seeds, overrides, splits, methods):
            run_dir = run_dir_for(root, key)
            cfg = load_config([*run_overrides, "trainer.progress_bar=false", f"output_dir={run_dir}"])
            resolve_names(cfg)
            finished = (run_dir / "summary.json").is_file()
            started = (run_dir / "checkpoints" / "last.ckpt").is_file()
            holder = None if finished else run_in_use(run_dir)
            if holder is not None:
                raise ConfigError(f"is being trained by another process ({holder}); wait for it to end, or give the "
                                  f"table another --out", where=str(run_dir))
            if finished or started or (run_dir / "config.yaml").is_file():
                _check_reusable(run_dir, cfg)
            if started and not finished:                   # cut off: continue it
                cfg = resume_config([f"resume={run_dir}", "trainer.progress_bar=false"])
            elif not finished and run_dir.exists():        # cut off before its first checkpoint: start it again
                cut_early.append(run_dir)
            planned.append((key, run_dir, cfg))
    missing = [run_dir for _, run_dir, _ in planned if not (run_dir / "summary.json").is_file()]
    if missing and not train_missing:
        raise ConfigError(f"{len(missing)} of the {len(planned)} runs have not finished (the first: {missing[0]}); "
                         f"drop --no-train to train them, or choose finished ones with --splits, --methods and "
                         f"--seeds", where="--no-train")
    for run_dir in cut_early:       # kept beside it, not overwritten: its logs may say why it stopped
        aside = next(run_dir.with_name(f"{run_dir.name}.cut-off-{n}") for n in range(1, 10 ** 6)
                     if not run_dir.with_name(f"{run_dir.name}.cut-off-{n}").exists())
        run_dir.rename(aside)
        print(f"[table] {run_dir} stopped before its first checkpoint; its files are now in {aside}, and it "
              f"starts again", flush=True)
    # Seed-major: every cell's first seed before any cell's second, so a table cut off is whole on its first seeds.
    to_train = [(run_dir, cfg) for _, run_dir, cfg in sorted(planned, key=lambda p: seeds.index(p[0][3]))
                if not (run_dir / "summary.json").is_file()]
    if jobs > 1 and len(to_train) > 1:
        train_in_parallel(to_train, jobs)
    else:
        for _, cfg in to_train:
            train(cfg)
    return {key: with_later_scores(json.loads((run_dir / "summary.json").read_text()), run_dir)
            for key, run_dir, _ in planned}


def last_logged_round(run_dir: Path) -> int | None:
    """The round of the last row of ``metrics.csv`` (read from its end; None without one)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        header = f.readline().decode(errors="replace").strip().split(",")
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        lines = f.read().decode(errors="replace").splitlines()[1:]     # the first is cut (or the header)
    if "round" not in header:
        return None
    column = header.index("round")
    for line in reversed(lines):
        cells = line.split(",")
        if len(cells) == len(header) and cells[column]:
            try:
                return int(float(cells[column]))
            except ValueError:
                continue
    return None


def _age(path: Path) -> str:
    seconds = max(0.0, time.time() - path.stat().st_mtime)
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def status(root: Path, schedule: str, seeds: list[int], tables: list[str], overrides: list[str] = (),
           splits: tuple[str, ...] = SPLITS, methods: list[str] | None = None) -> str:
    """Where each run of the tables stands under ``root`` (``--status``): finished, being trained (by which
    process, at which logged round), cut off (resumes from its checkpoint), or not started. Reads the run
    directories only; trains and writes nothing."""
    from fedgen_pl.train import run_in_use

    rows, counts = [], {}
    for table in tables:
        for key, run_overrides in runs_for(table, schedule, seeds, overrides, splits, methods):
            run_dir = run_dir_for(root, key)
            rounds = load_config(run_overrides).federation.global_rounds
            logged = last_logged_round(run_dir)
            at = f"round {logged} of {rounds}" if logged is not None else "no round logged"
            if logged is not None:        # a run trained by an older checkout holds no lock: its age tells
                at += f" (metrics.csv written {_age(run_dir / 'metrics.csv')} ago)"
            if (run_dir / "summary.json").is_file():
                state = "finished"
            elif (holder := run_in_use(run_dir)) is not None:
                state = f"training ({holder}), {at}"
            elif (run_dir / "checkpoints" / "last.ckpt").is_file():
                state = f"cut off, {at}: resumes from its last checkpoint"
            elif run_dir.exists():
                state = "cut off before its first checkpoint: starts again"
            else:
                state = "not started"
            word = state.split(" (")[0].split(",")[0].split(":")[0]
            counts[word] = counts.get(word, 0) + 1
            rows.append(f"| {table} | {key[1]} | {key[2]} | {key[3]} | {state} |")
    total = sum(counts.values())
    return "\n".join([f"Runs under `{root}` (schedule `{schedule}`, overrides `{' '.join(overrides) or '(none)'}`): "
                      + ", ".join(f"{n} {word}" for word, n in counts.items()) + f", of {total}.", "",
                      "| table | split | column | seed | state |", "|---|---|---|---|---|", *rows])


def train_in_parallel(runs: list[tuple[Path, object]], jobs: int) -> None:
    """Train ``runs`` (run directory, configuration) ``jobs`` at a time, each in a process of its own with
    this process's torch threads divided among the jobs (at least one each), its output in ``<run dir>.log``.
    A run that fails does not stop the others (each is resumable on its own); the first failure is raised
    once every run has ended. A run trained with other thread counts can differ in float rounding."""
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    print(f"[table] training {len(runs)} runs, {jobs} at a time with {threads} thread(s) each; each run's "
          f"output: <run dir>.log", flush=True)
    failures = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        started = time.time()
        futures = {pool.submit(train_logged, OmegaConf.to_container(cfg), str(log_path(run_dir)), threads): run_dir
                   for run_dir, cfg in runs}
        for done, future in enumerate(as_completed(futures), 1):
            run_dir, error = futures[future], future.exception()
            state = "finished" if error is None else f"failed ({type(error).__name__}: see {log_path(run_dir)})"
            print(f"[table] {done}/{len(runs)} {state}: {run_dir} ({(time.time() - started) / 60:.1f} min)", flush=True)
            if error is not None:
                failures.append(error)
    if failures:
        raise failures[0]


def log_path(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.log"


def train_logged(config: dict, log: str, threads: int) -> None:
    """One run in a worker process of ``train_in_parallel``: stdout and stderr appended to ``log``. The
    configuration crosses as a plain dict and is rebuilt as a saved run's is (``with_defaults``)."""
    import logging

    import torch

    from fedgen_pl.config import import_plugins
    from fedgen_pl.train import train

    torch.set_num_threads(threads)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)     # the log in the order it was written
    fedgen_log = logging.getLogger("fedgen")
    if not fedgen_log.handlers:            # the lines `fedgen train` prints with its own handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[fedgen] %(message)s"))
        fedgen_log.addHandler(handler)
        fedgen_log.setLevel(logging.INFO)
    cfg = with_defaults(config)
    import_plugins(cfg.plugins)
    try:
        train(cfg)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def with_later_scores(summary: dict, run_dir: Path) -> dict:
    """A finished run's metrics, plus those a later ``fedgen eval`` of its final checkpoint added
    (``checkpoints/metrics.json``, e.g. ``metrics.inception=true`` on a run trained without it). Only metrics
    the run did not record itself are added, and only from an evaluation of the run's last round."""
    later = run_dir / "checkpoints" / "metrics.json"
    if not later.is_file():
        return summary
    scores = json.loads(later.read_text())
    if scores.get("round") != summary.get("rounds"):
        return summary
    added = {k: v for k, v in scores.items() if k not in summary.get("metrics", {}) and "/" in k}
    return {**summary, "metrics": {**summary.get("metrics", {}), **added}}


def run_settings(root: Path, summaries: dict) -> dict[str, list]:
    """The precision and EMA decay the table's runs were trained with (from their config.yaml)."""
    found: dict[str, set] = {"precision": set(), "EMA decay": set()}
    for key in summaries:
        path = run_dir_for(root, key) / "config.yaml"
        if path.is_file():
            cfg = with_defaults(OmegaConf.load(path))
            found["precision"].add(str(cfg.trainer.precision))
            found["EMA decay"].add(float(cfg.model.ema_decay))
    return {name: sorted(values) for name, values in found.items() if values}


def training_origin(summaries: dict) -> dict:
    """The commits and machines that trained the table's runs (each run's ``trained`` segments), and how
    many runs predate that record: a table written from kept records names where its numbers came from,
    not only where it was printed."""
    segments = [s for summary in summaries.values() for s in summary.get("trained") or []]
    return {"commits": sorted({s["commit"] for s in segments}), "hardware": sorted({s["hardware"] for s in segments}),
            "runs_without_record": sum(1 for summary in summaries.values() if not summary.get("trained"))}


def _origin_line(origin: dict, runs: int) -> str:
    trained = origin.get("trained")
    if trained is None:
        return f"Commit `{origin['commit']}`, {origin['date']}, {origin['hardware']}."
    parts = []
    if trained["commits"]:
        parts.append(f"Trained at commit {', '.join(f'`{c}`' for c in trained['commits'])} on "
                     f"{'; '.join(trained['hardware'])}")
    if trained["runs_without_record"]:
        parts.append(f"{trained['runs_without_record']} of {runs} runs do not record their commit and hardware "
                     f"(trained before runs kept it)")
    return "; ".join(parts) + f". Written at commit `{origin['commit']}`, {origin['date']}, {origin['hardware']}."


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _seeds_note(found: int, seeds: list[int]) -> str:
    """A cell that only some of the seeds' runs have (a metric scored later on some of them) says so."""
    return f" ({found} of {len(seeds)} seeds)" if 0 < found < len(seeds) else ""


def run_healths(root: Path, summaries: dict[tuple, dict]) -> dict[tuple, bool | None]:
    return {key: run_health(run_dir_for(root, key)) for key in sorted(summaries)}


def render(summaries: dict[tuple, dict], tables: list[str], seeds: list[int], root: Path, schedule: str,
           overrides: list[str] = (), splits: tuple[str, ...] = SPLITS, methods: list[str] | None = None,
           origin: dict | None = None, health: dict[tuple, bool | None] | None = None) -> str:
    """The tables as Markdown; ``health`` (each run's ``run_health``) is read from the run directories unless given."""
    origin = origin or provenance()
    health = run_healths(root, summaries) if health is None else health
    settings = "".join(f", {name} {', '.join(f'`{v}`' for v in values)}" for name, values in origin.get("settings", {}).items())
    lines = [f"Schedule `{schedule}`, seeds {seeds}, overrides `{' '.join(overrides) or '(none)'}`{settings}; runs "
             f"under `{root}`. {_origin_line(origin, len(summaries))}", "",
             "Cells: ours as mean ± std over seeds (paper in brackets). Networks: IS = `is_classifier`, FID = "
             "`fid_classifier` (the scenario classifier's features), Acc = `acc` (the same classifier); the paper "
             "does not name its networks.", ""]
    for table in tables:
        chosen = [(i, c) for i, (c, _) in enumerate(methods_of(table)) if methods is None or c in methods]
        if table == "grid":
            lines += ["**Gaussian grid** (modes covered of 9; high_quality_share)", "",
                      "| metric | " + " | ".join(c for _, c in chosen) + " |", "|---|" + "---|" * len(chosen)]
            for metric, digits in (("modes_covered", 2), ("high_quality_share", 3)):
                cells = [_cell([_grid_value(summaries[("grid", "grid", c, s)]["metrics"], metric) for s in seeds],
                               digits=digits)
                         for _, c in chosen]
                lines.append(f"| {metric} | " + " | ".join(cells) + " |")
            lines.append("")
            continue
        if table == "literature":
            lines += _literature_rows(summaries, chosen, seeds, splits_of(table, splits))
            lines += decided_lines(decided(table, summaries, seeds, health), seeds)
            continue
        title = definition(table).get("title", table)
        headers = [_header(c, [summaries[(table, split, c, s)] for split in splits_of(table, splits) for s in seeds])
                   for _, c in chosen]
        lines += [f"**{title}**", "", "| split | metric | " + " | ".join(headers) + " |",
                  "|---|---|" + "---|" * len(chosen)]
        for split in splits_of(table, splits):
            paper = PAPER.get((table, split), {})
            names = definition(table).get("rows") or (list(paper) or ["IS", "FID", "Acc"]) + list(EXTRA_ROWS)
            # a row that no run of this split has (an extra metric, an anomaly score elsewhere) is left out
            names = [r for r in names if r in paper or any(
                ROWS[r] in summaries[(table, split, c, s)]["metrics"] for _, c in chosen for s in seeds)]
            for row in names:
                cells = []
                for i, column in chosen:
                    values = [summaries[(table, split, column, s)]["metrics"].get(ROWS[row]) for s in seeds]
                    values = [v for v in values if v is not None]
                    percent = row.startswith("Acc")
                    digits = 2 if percent or row in ("FID", "FID, EMA") else 4 if row.startswith("KID") else \
                        1 if row.startswith("-ELBO") else 3
                    scale = 100.0 if percent else 1.0
                    cell = _cell(values, scale, digits) + ("%" if percent and values else "") + _seeds_note(
                        len(values), seeds)
                    if row in paper:
                        cell += f" ({paper[row][i]}{'%' if row == 'Acc' else ''})"
                    cells.append(cell)
                network = ROWS[row].split("/")[-1]         # every row names the metric (and network) behind it
                lines.append(f"| {split} | {row} `{network}` | " + " | ".join(cells) + " |")
            if definition(table).get("rows"):
                lines.append(f"| {split} | MiB per round (all tiers) | " + " | ".join(
                    _cell([mib_per_round(summaries[(table, split, c, s)]) for s in seeds], digits=1)
                    for _, c in chosen) + " |")
        published = definition(table).get("published")
        if published:
            lines += ["", "Published (Inception FID): " + _published(published, splits_of(table, splits)), ""]
        lines.append("")
        lines += decided_lines(decided(table, summaries, seeds, health), seeds)
    lines += health_lines(summaries, health)
    lines += cost_lines(summaries)
    lines.append("Run directories:")
    for key in sorted(summaries):
        lines.append(f"- {key[0]} {key[1]} {key[2]} seed {key[3]}: `{run_dir_for(root, key)}`")
    return "\n".join(lines)


def claims_of(table: str) -> tuple[list, list]:
    """The table's claims and targets (configs/tables/<table>.yaml), checked against its splits and columns."""
    spec = definition(table)
    columns = [c for c, _ in methods_of(table)]
    try:
        claims = parse_claims(spec.get("claims"), spec["splits"], columns)
        targets = parse_targets(spec.get("targets"), spec.get("published", {}), columns)
        unknown = sorted({c.metric for c in claims} - set(ROWS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}: a claim's metric is a row name ({', '.join(ROWS)})")
        return claims, targets
    except ValueError as error:
        raise ConfigError(f"{error}; fix its claims or targets", where=str(CONFIG_DIR / "tables" / f"{table}.yaml"))


def decided(table: str, summaries: dict[tuple, dict], seeds: list[int], health: dict[tuple, bool | None]) -> dict:
    """The table's claims and targets (its YAML; fedgen_pl/verdicts.py) that this table's cells decide, as
    records: every seed's value of a cell's metric, and again without the runs that miss the health bar."""
    all_claims, all_targets = claims_of(table)
    present = {(split, column) for (t, split, column, _) in summaries if t == table}
    claims = [c for c in all_claims if all(cell in present for pair in c.comparisons for cell in pair)]
    # a claim the table covers in part (e.g. two of its columns): its comparisons here, undecided
    partial = [(c, replace(c, comparisons=tuple(p for p in c.comparisons if p[0] in present and p[1] in present)))
               for c in all_claims if c not in claims]
    partial = [(c, shown) for c, shown in partial if shown.comparisons]
    targets = [t for t in all_targets if t.cell in present]

    def values_of(skip):
        def values(cell, metric):
            if metric not in ROWS:             # e.g. the EMA row of a metric that has none
                return None
            found = [summaries[(table, *cell, s)]["metrics"].get(ROWS[metric]) for s in seeds
                     if (table, *cell, s) not in skip]
            return None if any(v is None for v in found) else found
        return values

    missed = {key for key, healthy in health.items() if healthy is False}
    records = [claim_record(c, values_of(()), values_of(missed) if missed else None) for c in claims]
    for claim, shown in partial:
        record = claim_record(shown, values_of(()))
        lacking = sorted({"/".join(cell) for pair in claim.comparisons for cell in pair if cell not in present})
        records.append({**record, "outcome": None, "also": {}, "lacking": lacking,
                        "partial_outcome": record["outcome"]})
    return {"claims": records,
            "targets": [target_record(t, values_of(()), definition(table)["published"]) for t in targets]}


def decided_lines(records: dict, seeds: list[int]) -> list[str]:
    if not records["claims"] and not records["targets"]:
        return []
    return [f"Claims and targets on {len(seeds)} seed(s) (fedgen_pl/verdicts.py; the claims' rule was fixed in "
            f"docs/results/table1.md before Table 1's and 2's full-schedule seeds 1-2):", "",
            *map(claim_line, records["claims"]), *map(target_line, records["targets"]), ""]


def health_lines(summaries: dict[tuple, dict], health: dict[tuple, bool | None]) -> list[str]:
    """Which GAN runs miss the health bar (fedgen_pl/health.py) on their own records (``health``: each run's
    ``run_health``): such a run stays in the means above, and is named, so that a collapsed seed is neither
    hidden in a mean nor quietly dropped."""
    checked = [key for key, healthy in health.items() if healthy is not None]
    missed = [f"{key[0]} {key[1]} {key[2]} seed {key[3]} (final IS {summaries[key]['metrics'].get(ROWS['IS'], float('nan')):.2f})"
              for key in checked if not health[key]]
    if not checked:
        return []
    if not missed:
        return [f"Health bar (fedgen_pl/health.py): all {len(checked)} GAN runs meet it.", ""]
    return [f"Health bar (fedgen_pl/health.py): {len(missed)} of {len(checked)} GAN runs miss it, kept in the "
            f"means above: {'; '.join(missed)}.", ""]


def cost_lines(summaries: dict[tuple, dict]) -> list[str]:
    """What the table's runs cost to train, in core-hours (each run's ``run_cpu_seconds``: every segment up to
    the checkpoint the next resumed from, evaluations included): the measured figure that the next table's
    estimate is set against. Runs trained before runs kept it are counted apart."""
    seconds = [s["run_cpu_seconds"] for s in summaries.values() if s.get("run_cpu_seconds") is not None]
    if not seconds:
        return []
    missing = len(summaries) - len(seconds)
    return [f"Training cost (`run_cpu_seconds`): {sum(seconds) / 3600:.2f} core-hours over {len(seconds)} runs, "
            f"{min(seconds) / 3600:.2f} to {max(seconds) / 3600:.2f} a run"
            + (f"; {missing} of {len(summaries)} runs predate the record" if missing else "") + ".", ""]


def _published(published: dict, splits) -> str:
    """``published`` ({split: {method: value}}) as one line, for the splits shown."""
    return "; ".join(f"{split}: " + ", ".join(f"{name} {value}" for name, value in published[split].items())
                     for split in splits if split in published)


def _header(column: str, summaries: list[dict]) -> str:
    """A column's name, with the eps its runs spent when they are private (``summary.json``'s privacy)."""
    spent = sorted({round(s["privacy"]["epsilon"], 2) for s in summaries
                    if (s.get("privacy") or {}).get("epsilon") is not None})
    if not spent:
        return column
    return f"{column} (ε = {spent[0]:g})" if len(spent) == 1 else f"{column} (ε = {spent[0]:g}–{spent[-1]:g})"


def _literature_rows(summaries: dict, chosen: list, seeds: list[int], splits: tuple[str, ...]) -> list[str]:
    """The literature protocol's table: Inception FID (10k) and KID, the classifier's FID and Acc, with
    the EMA beside the raw generator, and the bytes per round; PRISM's published numbers under it."""
    lines = ["**Literature protocol (PRISM, ICLR 2025): 10 devices, label-sorted shards**", "",
             "| data | metric | " + " | ".join(c for _, c in chosen) + " |", "|---|---|" + "---|" * len(chosen)]
    for split in splits:
        for row in LITERATURE_ROWS:
            values = [[summaries[("literature", split, c, s)]["metrics"].get(ROWS[row]) for s in seeds] for _, c in chosen]
            values = [[v for v in column if v is not None] for column in values]
            if not any(values):
                continue
            scale, digits, unit = (100.0, 2, "%") if row.startswith("Acc") else (1.0, 4 if row.startswith("KID") else 2, "")
            cells = [_cell(v, scale, digits) + (unit if v else "") + _seeds_note(len(v), seeds) for v in values]
            lines.append(f"| {split} | {row} `{ROWS[row].split('/')[-1]}` | " + " | ".join(cells) + " |")
        per_round = [[mib_per_round(summaries[("literature", split, c, s)]) for s in seeds] for _, c in chosen]
        lines.append(f"| {split} | MiB per round (all tiers) | " + " | ".join(_cell(v, digits=1) for v in per_round) + " |")
    lines += ["", "PRISM's published Inception FID (10k samples, non-i.i.d., no DP): " + _published(PRISM, splits), ""]
    return lines


def mib_per_round(summary: dict) -> float:
    """MiB a round sends over every link (device-edge and edge-cloud, both directions)."""
    return (summary["bytes_device_edge"] + summary["bytes_edge_cloud"]) / max(summary["rounds"], 1) / 2 ** 20


def _grid_value(metrics: dict, name: str) -> float:
    return metrics.get(f"global/{name}", metrics.get(name))       # runs before 2026-11-30 saved bare names


def side_by_side(images: list[tuple[str, Path]], path: Path, title: str) -> Path | None:
    """One figure with each run's plot as a panel, left to right (the paper's Fig. 3 and Fig. 4 layout)."""
    images = [(name, p) for name, p in images if p.is_file()]
    if not images:
        return None
    from fedgen_pl.plots import plt

    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4.6), squeeze=False)
    for ax, (name, image) in zip(axes[0], images):
        ax.imshow(plt.imread(image))
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def figures(root: Path, tables: list[str], seeds: list[int], splits, methods) -> list[Path]:
    """``grid_samples.png``: each method's scatter of the global generator's samples; ``<table>_<split>_
    samples.png``: each method's sample grid; all for the first seed."""
    seed, written = seeds[0], []
    for table in tables:
        columns = [c for c, _ in methods_of(table) if methods is None or c in methods]
        for split in (("grid",) if table == "grid" else splits_of(table, splits)):
            plot = "global_samples.png" if table == "grid" else "samples_global.png"
            images = [(c, run_dir_for(root, (table, split, c, seed)) / "plots" / plot) for c in columns]
            name = "grid_samples.png" if table == "grid" else f"{table}_{split}_samples.png"
            where = "Gaussian grid" if table == "grid" else f"{table} {split}"
            path = side_by_side(images, root / name, f"{where}, seed {seed}: the global generator at the end of "
                                                     f"training")
            if path is not None:
                written.append(path)
    return written


def check_selection(tables: list[str], splits, methods) -> None:
    """The columns and splits asked for exist in the tables, and the tables' claims are well formed (before
    any run starts)."""
    def swallowed(option: str, unknown: list[str]) -> str:   # argparse gives `--methods A k=v` both words
        return f"; key=value overrides after {option} are read as its values: put them before the options" \
            if any("=" in word for word in unknown) else ""

    known = [c for t in tables for c, _ in methods_of(t)]
    unknown = [m for m in methods or [] if m not in known]
    if unknown:
        raise ConfigError(f"--methods: unknown column(s) {unknown}; the tables {tables} have "
                          f"{sorted(set(known))}{swallowed('--methods', unknown)}")
    for table in tables:
        claims_of(table)
    known = {split for t in tables for split in definition(t)["splits"]}
    unknown = [split for split in splits or () if split not in known]
    if unknown:
        raise ConfigError(f"--splits: unknown split(s) {unknown}; the tables {tables} have {sorted(known)}"
                          f"{swallowed('--splits', unknown)}")


def main(schedule: str, seeds: list[int], tables: list[str], out: str | None, overrides: list[str] = (),
         splits: tuple[str, ...] | None = None, methods: list[str] | None = None, train_missing: bool = True,
         jobs: int = 1) -> Path:
    if jobs < 1:
        raise ConfigError(f"must be at least 1, got {jobs}; 1 trains the runs one after another", where="--jobs")
    root = Path(out) if out else Path("runs") / f"table-{schedule}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    overrides, splits = list(overrides), tuple(splits or ())
    check_selection(tables, splits, methods)
    summaries = ensure_runs(root, schedule, seeds, tables, overrides, tuple(splits), methods, train_missing, jobs)
    origin = {**provenance(), "settings": run_settings(root, summaries), "trained": training_origin(summaries)}
    health = run_healths(root, summaries)          # read once: for table.md and table.json
    text = render(summaries, tables, seeds, root, schedule, overrides, tuple(splits), methods, origin, health)
    root.mkdir(parents=True, exist_ok=True)
    pictures = figures(root, tables, seeds, splits, methods)
    if pictures:
        text += "\n\nFigures: " + ", ".join(f"`{p}`" for p in pictures)
    (root / "table.md").write_text(text + "\n")
    (root / "table.json").write_text(json.dumps({
        **origin, "schedule": schedule, "seeds": seeds, "tables": tables, "overrides": overrides,
        "splits": list(splits), "methods": methods,
        "verdicts": {table: decided(table, summaries, seeds, health) for table in tables},
        "runs": [{"table": k[0], "split": k[1], "method": k[2], "seed": k[3], "run_dir": str(run_dir_for(root, k)),
                  "metrics": v.get("metrics", {})} for k, v in sorted(summaries.items())]}, indent=1))
    print(text)
    return root / "table.md"
