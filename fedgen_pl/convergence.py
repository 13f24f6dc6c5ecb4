"""When a run has converged: the rule behind ``schedule: full`` (docs/results/convergence.md).

The round ``r`` of a run of ``R`` rounds is *converged* when the global FID improves by less than
``tolerance`` (5%) over the next ``window`` x R rounds (20%):

    min_{r < r' <= r + window R} F(r')  >=  (1 - tolerance) F(r),

where F is the FID at the evaluated rounds, smoothed by a running median of three evaluations (one lucky
or unlucky evaluation does not decide). ``schedule: full`` is the first converged round; a run in which
no round is converged (the FID still falls by 5% in the last fifth) has not converged, and the answer is
None: run longer.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path


def smoothed(values: list[float]) -> list[float]:
    """Running median of three (the ends: the median of the two or one available)."""
    return [statistics.median(values[max(0, i - 1):i + 2]) for i in range(len(values))]


def convergence_round(rounds: list[int], fids: list[float], total_rounds: int | None = None,
                      window: float = 0.2, tolerance: float = 0.05) -> int | None:
    """The first evaluated round after which the smoothed FID improves by less than ``tolerance`` over
    the next ``window`` x ``total_rounds`` rounds; None if there is none. Only rounds whose whole window
    has been evaluated count, so a run still going gives None until it can decide."""
    if len(rounds) != len(fids) or not rounds:
        raise ValueError("convergence_round: rounds and fids must be non-empty and of one length")
    total = total_rounds or rounds[-1]
    span = window * total
    curve = smoothed(list(fids))
    for i, r in enumerate(rounds):
        if r + span > min(total, rounds[-1]):      # its window not trained (or not evaluated) yet
            return None
        ahead = [f for q, f in zip(rounds[i + 1:], curve[i + 1:]) if q <= r + span]
        if ahead and min(ahead) >= (1 - tolerance) * curve[i]:
            return r
    return None


def fid_curve(run_dir: Path, metric: str = "global/fid_classifier") -> tuple[list[int], list[float]]:
    """(round, value) of ``metric`` at every evaluation in a run's ``metrics.csv``."""
    points = {}
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(metric) not in (None, ""):
                points[int(float(row["round"]))] = float(row[metric])
    rounds = sorted(points)
    return rounds, [points[r] for r in rounds]
