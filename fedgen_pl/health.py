"""Whether an image run trained healthily, and whether two groups of seeds end level (docs/results).

**Health bar** of a run whose classifier knows ``L`` labels, on the raw global generator's
``is_classifier`` at its evaluated rounds ``r`` (``R`` the last):

    IS(r) >= 1.2         for every evaluated r > 20   (past warm-up, no collapse onto one class)
    IS(R) >= 0.4 L       sync federations only         (8 with 20 labels, 4 with 10)

An asynchronous federation has no bar at ``R``: its rounds carry fewer updates (docs/results/archive.md).

**Level**: a group of seeds ``B`` (e.g. ``bf16-mixed``) ends level with a reference group ``A`` (``32-true``)
when its mean final FID lies within one standard deviation of the reference's mean:

    |mean(B) - mean(A)| <= std(A)            (std over seeds, n - 1 in the denominator)

The reference's spread is the noise a change of seed alone makes; a setting that moves the mean by less
than that cannot be told from a reseed.
"""

from __future__ import annotations

import statistics

WARM_UP_ROUNDS = 20
IS_FLOOR = 1.2
IS_FINAL_PER_LABEL = 0.4


def health_bar(rounds: list[int], inception_scores: list[float], labels: int, final_bar: bool = True) -> bool:
    """The health bar above on one run's evaluations (``rounds`` ascending, one IS each)."""
    if len(rounds) != len(inception_scores) or not rounds:
        raise ValueError("health_bar: rounds and inception_scores must be non-empty and of one length")
    if labels < 1:
        raise ValueError(f"health_bar: labels must be at least 1, got {labels}")
    past_warm_up = [s for r, s in zip(rounds, inception_scores) if r > WARM_UP_ROUNDS]
    if any(s < IS_FLOOR for s in past_warm_up):
        return False
    return not final_bar or inception_scores[-1] >= IS_FINAL_PER_LABEL * labels


def level(values: list[float], reference: list[float]) -> tuple[bool, float, float]:
    """(ends level, |mean(values) - mean(reference)|, std(reference)): the rule above."""
    if not values or len(reference) < 2:
        raise ValueError("level: needs at least one value and two reference values")
    gap = abs(statistics.fmean(values) - statistics.fmean(reference))
    spread = statistics.stdev(reference)
    return gap <= spread, gap, spread
