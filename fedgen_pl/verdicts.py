"""The paper's claims and the literature's targets, decided on a table's seeds: the claims by the rule fixed
before Table 1's and Table 2's full-schedule seeds 1 and 2 were trained (docs/results/table1.md, "How the
full-schedule verdicts will be read"), the targets as issue #27 set them (a mean below a published number).

**Ahead**: of two cells A and B (one split's column each, its seeds' final values of one metric), A is
ahead of B when its mean is better and the gap exceeds the wider of the two columns' spreads:

    mean(A) better than mean(B)   and   |mean(A) - mean(B)| > max(std(A), std(B))      (std: n - 1)

and otherwise A and B are **level**. Lower is better for FID, KID and -ELBO, higher for the rest (IS, Acc,
class consistency). Neither column is the reference, so the wider spread is the seed noise to beat.

**A claim** is a list of comparisons "A > B" (A ahead of B) on one metric. It **holds** when every A is
ahead of its B, **does not hold** when some B is ahead of its A, and is **not shown** otherwise.

**A target** "A < name" (the literature's): the mean of A lies below the number published as ``name``.

Claims and targets are data, in each table's YAML (configs/tables/); this module only reads and decides them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

AHEAD, BEHIND, LEVEL = "ahead", "behind", "level"
HOLDS, DOES_NOT_HOLD, NOT_SHOWN = "holds", "does not hold", "not shown"
LOWER_IS_BETTER = ("FID", "KID", "ELBO")          # a metric whose row name holds one of these

Cell = tuple[str, str]                             # (split, column)


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def compare(a: list[float], b: list[float], lower_better: bool) -> str:
    """``ahead`` if A is ahead of B by the rule above, ``behind`` if B is ahead of A, else ``level``."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare: needs at least 2 values per cell, got {len(a)} and {len(b)}")
    gap = statistics.fmean(a) - statistics.fmean(b)
    if abs(gap) <= max(statistics.stdev(a), statistics.stdev(b)):
        return LEVEL
    return AHEAD if (gap < 0) == lower_better else BEHIND


def claim_outcome(comparisons: list[str]) -> str:
    """``holds`` if every comparison is ``ahead``, ``does not hold`` if any is ``behind``, else ``not shown``."""
    if not comparisons:
        raise ValueError("claim_outcome: a claim needs at least one comparison")
    if BEHIND in comparisons:
        return DOES_NOT_HOLD
    return HOLDS if all(c == AHEAD for c in comparisons) else NOT_SHOWN


@dataclass(frozen=True)
class Claim:
    name: str
    metric: str                                    # a row name (fedgen_pl/table.py's ROWS)
    comparisons: tuple[tuple[Cell, Cell], ...]     # (A, B): A ahead of B


@dataclass(frozen=True)
class Target:
    cell: Cell
    published: str                                 # the name of a published number of the cell's split
    metric: str = "FID (Inception)"


def parse_cell(text: str, splits, columns, where: str) -> Cell:
    split, _, column = text.strip().partition("/")
    if split not in splits or column not in columns:
        raise ValueError(f"{where}: '{text.strip()}' is not split/column of this table (splits {list(splits)}, "
                         f"columns {list(columns)})")
    return split, column


def parse_claims(spec: dict, splits, columns, default_metric: str = "FID (Inception)") -> list[Claim]:
    """A table's ``claims``: name -> list of "split/A > split/B", or {metric: row, ahead: [...]}."""
    claims = []
    for name, body in (spec or {}).items():
        metric, lines = (body.get("metric", default_metric), body.get("ahead")) if isinstance(body, dict) \
            else (default_metric, body)
        if not lines:
            raise ValueError(f"claim '{name}': no comparisons")
        pairs = []
        for line in lines:
            a, sep, b = line.partition(">")
            if not sep:
                raise ValueError(f"claim '{name}': '{line}' is not 'split/A > split/B'")
            pairs.append((parse_cell(a, splits, columns, f"claim '{name}'"),
                          parse_cell(b, splits, columns, f"claim '{name}'")))
        claims.append(Claim(name, metric, tuple(pairs)))
    return claims


def parse_targets(lines: list[str], published: dict, columns) -> list[Target]:
    """A table's ``targets``: "split/column < name", ``name`` one of ``published[split]``."""
    targets = []
    for line in lines or []:
        a, sep, name = line.partition("<")
        cell = parse_cell(a, published, columns, "target") if sep else None
        if cell is None or name.strip() not in published[cell[0]]:
            raise ValueError(f"target '{line}' is not 'split/column < published name' (published: {published})")
        targets.append(Target(cell, name.strip()))
    return targets


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _shown(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def decide(claim: Claim, values, metric: str | None = None) -> tuple[str | None, list[dict]]:
    """(outcome, each comparison's means, spreads and result) of ``claim`` on ``metric`` (its own unless
    given); ``values(cell, metric)`` gives a cell's values over the seeds, or None where a seed lacks the
    metric. The outcome is None where a cell lacks the metric or has fewer than two seeds."""
    metric = metric or claim.metric
    comparisons = []
    for a, b in claim.comparisons:
        va, vb = values(a, metric), values(b, metric)
        if va is None or vb is None or len(va) < 2 or len(vb) < 2:
            return None, []
        (a_mean, a_std), (b_mean, b_std) = _mean_std(va), _mean_std(vb)
        comparisons.append({"a": "/".join(a), "a_mean": a_mean, "a_std": a_std, "b": "/".join(b), "b_mean": b_mean,
                            "b_std": b_std, "result": compare(va, vb, lower_is_better(metric))})
    return claim_outcome([c["result"] for c in comparisons]), comparisons


SECONDARY = ("FID (Inception), EMA", "FID", "Acc")     # reported beside every verdict (the rule)


def claim_record(claim: Claim, values, healthy_values=None) -> dict:
    """A claim decided: its outcome and comparisons on its metric, its outcomes on the secondary metrics
    the cells have (``also``), and, where dropping the runs that miss the health bar (``healthy_values``)
    turns it, the outcome without them (``without_unhealthy``; "not decided" with too few seeds left)."""
    outcome, comparisons = decide(claim, values)
    record = {"claim": claim.name, "metric": claim.metric, "outcome": outcome, "comparisons": comparisons,
              "also": {}, "without_unhealthy": None}
    if outcome is None:
        return record
    for metric in SECONDARY:
        other, _ = decide(claim, values, metric) if metric != claim.metric else (None, [])
        if other is not None:
            record["also"][metric] = other
    if healthy_values is not None:
        without, _ = decide(claim, healthy_values)
        if without != outcome:
            record["without_unhealthy"] = without or "not decided"
    return record


def claim_line(record: dict) -> str:
    """A claim's record as one Markdown bullet (saying where the EMA's Inception FID turns it)."""
    phrases = [f"{c['a']} {_shown(c['a_mean'], c['a_std'])} against {c['b']} {_shown(c['b_mean'], c['b_std'])}: "
               f"{c['result']}" for c in record["comparisons"]]
    if record.get("lacking"):
        return (f"- {record['claim']}: **not decided here** (the table lacks {', '.join(record['lacking'])})"
                + (f"; the comparisons it has, on {record['metric']}: {'; '.join(phrases)}." if phrases else "."))
    if record["outcome"] is None:
        return f"- {record['claim']}: **not decided** (a cell lacks {record['metric']} on two or more seeds)"
    line = f"- {record['claim']}: **{record['outcome']}** on {record['metric']} ({'; '.join(phrases)})."
    others = [f"{metric}: {other}" + (" (the other direction)" if metric == "FID (Inception), EMA"
                                      and other != record["outcome"] else "")
              for metric, other in record["also"].items()]
    if others:
        line += " Also " + "; ".join(others) + "."
    if record["without_unhealthy"] is not None:
        line += f" Without the runs that miss the health bar: {record['without_unhealthy']}."
    return line


def target_record(target: Target, values, published: dict) -> dict:
    """A target decided: "met" when the mean of its cell is below the published number, else "missed"
    (None where no seed has the metric); the same for the EMA's metric beside it (``ema``), where the cell
    has it."""
    number = float(published[target.cell[0]][target.published])

    def against(metric: str) -> dict:
        found = values(target.cell, metric) or []
        mean, std = _mean_std(found) if found else (None, None)
        return {"mean": mean, "std": std, "seeds": len(found),
                "outcome": None if mean is None else "met" if mean < number else "missed"}

    ema = against(f"{target.metric}, EMA")
    return {"target": f"{'/'.join(target.cell)} below {target.published} ({number:g}) on {target.metric}",
            "published": number, **against(target.metric), "ema": ema if ema["outcome"] else None}


def target_line(record: dict) -> str:
    if record["outcome"] is None:
        return f"- {record['target']}: **not decided** (no seed has the metric)"
    line = (f"- {record['target']}: **{record['outcome']}**, {_shown(record['mean'], record['std'])} "
            f"({record['seeds']} seed{'s' if record['seeds'] != 1 else ''})")
    ema = record["ema"]
    if ema is not None:
        line += f"; the EMA: {ema['outcome']}, {_shown(ema['mean'], ema['std'])}"
    return line
