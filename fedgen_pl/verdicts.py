"""The paper's claims and the literature's targets, decided on a table's seeds by the rule fixed before the
full-schedule seeds 1 and 2 were trained (docs/results/table1.md, "How the full-schedule verdicts will be read").

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


def _mean_std(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def decide(claim: Claim, values, metric: str | None = None) -> tuple[str | None, list[str]]:
    """(outcome, one phrase per comparison) of ``claim`` on ``metric`` (its own unless given);
    ``values(cell, metric)`` gives a cell's values over the seeds, or None where a seed lacks the metric.
    The outcome is None where a cell lacks the metric or has fewer than two seeds."""
    metric = metric or claim.metric
    results, phrases = [], []
    for a, b in claim.comparisons:
        va, vb = values(a, metric), values(b, metric)
        if va is None or vb is None or len(va) < 2 or len(vb) < 2:
            return None, []
        result = compare(va, vb, lower_is_better(metric))
        results.append(result)
        phrases.append(f"{'/'.join(a)} {_mean_std(va, 2)} against {'/'.join(b)} {_mean_std(vb, 2)}: {result}")
    return claim_outcome(results), phrases


def target_line(target: Target, values, published: dict) -> str:
    """"met" when the mean of the target's cell is below the published number, else "missed"."""
    number = float(published[target.cell[0]][target.published])
    found = values(target.cell, target.metric)
    label = f"{'/'.join(target.cell)} below {target.published} ({number:g}) on {target.metric}"
    if not found:
        return f"- {label}: **not decided** (no seed has the metric)"
    met = statistics.fmean(found) < number
    return f"- {label}: **{'met' if met else 'missed'}**, {_mean_std(found, 2)} ({len(found)} seeds)"


SECONDARY = ("FID (Inception), EMA", "FID", "Acc")     # reported beside every verdict (the rule)


def claim_lines(claims: list[Claim], values, healthy_values=None) -> list[str]:
    """One bullet per claim: its outcome on its metric with each comparison, then the outcomes on the
    secondary metrics (saying where the EMA's Inception FID turns it), and, where dropping the runs that
    miss the health bar (``healthy_values``) turns it, the outcome without them."""
    lines = []
    for claim in claims:
        outcome, phrases = decide(claim, values)
        if outcome is None:
            lines.append(f"- {claim.name}: **not decided** (a cell lacks {claim.metric} on two or more seeds)")
            continue
        line = f"- {claim.name}: **{outcome}** on {claim.metric} ({'; '.join(phrases)})."
        others = []
        for metric in SECONDARY:
            if metric == claim.metric:
                continue
            other, _ = decide(claim, values, metric)
            if other is not None:
                turned = " (the other direction)" if metric == "FID (Inception), EMA" and other != outcome else ""
                others.append(f"{metric}: {other}{turned}")
        if others:
            line += " Also " + "; ".join(others) + "."
        if healthy_values is not None:
            without, _ = decide(claim, healthy_values)
            if without != outcome:
                line += (f" Without the runs that miss the health bar: {without or 'not decided (too few seeds)'}.")
        lines.append(line)
    return lines
