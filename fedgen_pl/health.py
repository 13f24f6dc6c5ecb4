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

**Saturated discriminators**: the share of a run's logged discriminator losses ``L_D(t)`` (``train/d_loss``,
logged every ``trainer.log_every_n_iters`` iterations ``t``) past iteration 200 that lie below 0.01:

    s = |{t > 200 : L_D(t) < 0.01}| / |{t > 200}|

``L_D ~ 0`` means ``D(G(z)) ~ 0``, where the saturating generator loss ``log(1 - sigmoid(a))`` has the
gradient ``-sigmoid(a) ~ 0`` in the logit ``a``: its generator gets almost no signal. A run whose ``s`` is
high has stalled there, whatever its precision.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

WARM_UP_ROUNDS = 20
IS_FLOOR = 1.2
IS_FINAL_PER_LABEL = 0.4
SATURATION_AFTER = 200          # iterations: past the first rounds, where every discriminator wins for a while
SATURATED_LOSS = 0.01


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


def saturated_share(steps: list[int], d_losses: list[float]) -> float:
    """The share ``s`` above of one run's logged discriminator losses (``steps`` the iterations they were
    logged at)."""
    if len(steps) != len(d_losses):
        raise ValueError("saturated_share: steps and d_losses must be of one length")
    late = [loss for step, loss in zip(steps, d_losses) if step > SATURATION_AFTER]
    if not late:
        raise ValueError(f"saturated_share: no discriminator loss logged after iteration {SATURATION_AFTER}")
    return sum(loss < SATURATED_LOSS for loss in late) / len(late)


RUN_RECORDS = ("config.yaml", "summary.json", "metrics.csv")      # what a finished run directory holds


def run_health(run_dir: Path) -> bool | None:
    """The health bar on a run directory's own records (``config.yaml``, ``summary.json``, ``metrics.csv``):
    the global generator's ``is_classifier`` at every evaluation, the classifier's label count, and the final
    bar only for a sync federation. None where the bar does not apply: not a GAN, or no classifier IS."""
    from omegaconf import OmegaConf

    from fedgen_pl.config import with_defaults
    from fedgen_pl.convergence import fid_curve
    from fedgen_pl.recipes import recipe_of

    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in RUN_RECORDS):
        return None
    cfg = with_defaults(OmegaConf.load(run_dir / "config.yaml"))
    labels = len((json.loads((run_dir / "summary.json").read_text()).get("classifier") or {}).get("label_names") or [])
    rounds, scores = fid_curve(run_dir, "global/is_classifier")
    if recipe_of(cfg.model.name).family != "gan" or not labels or not rounds:
        return None
    # federation["update"]: attribute access would give the mapping's update method
    return health_bar(rounds, scores, labels, final_bar=cfg.federation["update"] != "async")
