"""``fedgen table``: run the configurations behind the paper's tables and print them in its layout.

Table 1 (MNIST + FashionMNIST) and Table 2 (MNIST / inverse MNIST), each i.i.d. and non-i.i.d., and the
Gaussian-grid comparison. Every cell is ours as mean ± std over seeds with the paper's number beside it;
every metric names its network. Runs whose ``summary.json`` exists are reused, so an interrupted table
continues where it stopped.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path

from fedgen_pl.config import load_config

ASYNC = ["federation.update=async", "clock.delay=tiers"]     # the paper's FR/LR async: heterogeneous devices

# (column, model overrides) per table
TABLE1_METHODS = [
    ("Cent. GAN", ["model.name=centralized_gan"]),
    ("Fed. GAN", ["model.name=fed_gan"]),
    ("M-D GAN", ["model.name=md_gan"]),
    ("FR sync", ["model.name=fedgen_fr"]),
    ("FR async", ["model.name=fedgen_fr", *ASYNC]),
]
TABLE2_METHODS = [
    ("RegCGAN", ["model.name=reg_cgan"]),
    ("FedAvg cGAN", ["model.name=fed_cgan"]),
    ("LR sync", ["model.name=fedgen_lr"]),
    ("LR async", ["model.name=fedgen_lr", *ASYNC]),
]
GRID_METHODS = TABLE1_METHODS

# The paper's numbers (METHOD.md §4).
PAPER = {
    ("table1", "iid"): {"IS": [3.386, 4.215, 4.228, 4.363, 3.208], "FID": [19.84, 17.14, 14.69, 13.82, 52.24],
                        "Acc": [82.21, 87.84, 90.60, 90.65, 53.17]},
    ("table1", "noniid"): {"IS": [3.386, 2.281, 2.839, 3.875, 2.922], "FID": [19.84, 74.80, 96.12, 26.15, 77.18],
                           "Acc": [82.21, 42.37, 45.22, 86.05, 51.20]},
    ("table2", "iid"): {"IS": [4.037, 3.360, 3.971, 3.041], "FID": [26.11, 33.20, 28.56, 41.35]},
    ("table2", "noniid"): {"IS": [4.037, 2.651, 3.495, 2.452], "FID": [26.11, 53.26, 45.22, 59.82]},
}
# Our metric behind each of the paper's rows (the paper does not name its networks).
ROWS = {"IS": "global/is_classifier", "FID": "global/fid_classifier", "Acc": "global/acc",
        "FID (Inception)": "global/fid_inception", "class consistency": "global/class_consistency"}


def runs_for(table: str, schedule: str, seeds: list[int]) -> list[tuple[tuple, list[str]]]:
    """((table, split, column, seed), overrides) for every run the table needs."""
    runs = []
    if table in ("table1", "table2"):
        methods = TABLE1_METHODS if table == "table1" else TABLE2_METHODS
        prefix = "mnist_fmnist" if table == "table1" else "mnist_inverse"
        for split in ("iid", "noniid"):
            for column, overrides in methods:
                for seed in seeds:
                    runs.append(((table, split, column, seed),
                                 [f"experiment={prefix}_{split}", f"schedule={schedule}", f"seed={seed}", *overrides]))
    else:
        for column, overrides in GRID_METHODS:
            extra = ["experiment=gaussian_grid_async"] if "federation.update=async" in overrides else \
                ["experiment=gaussian_grid"]
            for seed in seeds:
                runs.append(((table, "grid", column, seed),
                             [*extra, f"schedule={schedule}", f"seed={seed}",
                              *[o for o in overrides if not o.startswith("clock.")]]))
    return runs


def run_dir_for(root: Path, key: tuple) -> Path:
    table, split, column, seed = key
    return root / table / split / column.replace(" ", "_").replace(".", "") / f"seed{seed}"


def ensure_runs(root: Path, schedule: str, seeds: list[int], tables: list[str]) -> dict[tuple, dict]:
    from fedgen_pl.train import train

    summaries = {}
    for table in tables:
        for key, overrides in runs_for(table, schedule, seeds):
            run_dir = run_dir_for(root, key)
            summary_path = run_dir / "summary.json"
            if not summary_path.is_file():
                cfg = load_config([*overrides, "trainer.progress_bar=false", f"output_dir={run_dir}"])
                train(cfg)
            summaries[key] = json.loads(summary_path.read_text())
    return summaries


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(summaries: dict[tuple, dict], tables: list[str], seeds: list[int], root: Path, schedule: str) -> str:
    lines = [f"Schedule `{schedule}`, seeds {seeds}; runs under `{root}`. Cells: ours as mean ± std over seeds "
             f"(paper in brackets). Networks: IS = `is_classifier`, FID = `fid_classifier` (the scenario "
             f"classifier's features), Acc = `acc` (the same classifier); the paper does not name its networks.", ""]
    for table in tables:
        if table == "grid":
            lines += [f"**Gaussian grid** (modes covered of 9; high_quality_share)", "",
                      "| metric | " + " | ".join(c for c, _ in GRID_METHODS) + " |",
                      "|---|" + "---|" * len(GRID_METHODS)]
            for metric, digits in (("modes_covered", 2), ("high_quality_share", 3)):
                cells = [_cell([summaries[("grid", "grid", c, s)]["metrics"][metric] for s in seeds], digits=digits)
                         for c, _ in GRID_METHODS]
                lines.append(f"| {metric} | " + " | ".join(cells) + " |")
            lines.append("")
            continue
        methods = TABLE1_METHODS if table == "table1" else TABLE2_METHODS
        title = "Table 1, MNIST + FashionMNIST" if table == "table1" else "Table 2, MNIST / inverse MNIST"
        lines += [f"**{title}**", "", "| split | metric | " + " | ".join(c for c, _ in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for split in ("iid", "noniid"):
            paper = PAPER[(table, split)]
            names = list(paper) + [r for r in ("FID (Inception)", "class consistency") if any(
                ROWS[r] in summaries[(table, split, c, s)]["metrics"] for c, _ in methods for s in seeds)]
            for row in names:
                cells = []
                for i, (column, _) in enumerate(methods):
                    values = [summaries[(table, split, column, s)]["metrics"].get(ROWS[row]) for s in seeds]
                    values = [v for v in values if v is not None]
                    scale, digits = (100.0, 2) if row == "Acc" else (1.0, 3 if row != "FID" else 2)
                    cell = _cell(values, scale, digits) + ("%" if row == "Acc" and values else "")
                    if row in paper:
                        cell += f" ({paper[row][i]}{'%' if row == 'Acc' else ''})"
                    cells.append(cell)
                network = ROWS[row].split("/")[-1]         # every row names the metric (and network) behind it
                lines.append(f"| {split} | {row} `{network}` | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Run directories:")
    for key in sorted(summaries):
        lines.append(f"- {key[0]} {key[1]} {key[2]} seed {key[3]}: `{run_dir_for(root, key)}`")
    return "\n".join(lines)


def main(schedule: str, seeds: list[int], tables: list[str], out: str | None) -> Path:
    root = Path(out) if out else Path("runs") / f"table-{schedule}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    summaries = ensure_runs(root, schedule, seeds, tables)
    text = render(summaries, tables, seeds, root, schedule)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    print(text)
    return root / "table.md"
