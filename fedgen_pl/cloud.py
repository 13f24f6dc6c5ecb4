"""The cloud tier, in the manner of a Flower strategy: one object owns the server's hyperparameters (the
registered aggregation rule, ``tau_cloud``, ``cloud_lr``) and the round-end hooks of the model family,
and ``run_round`` is the whole cloud round:

1. the members' round statistics (L*_k, sample counts, who took part) from the model;
2. the aggregation rule over the members that took part (``aggregation.aggregate``);
3. the new global model loaded and sent down (``FederationModule.finish_round``);
4. the hooks: FedAvg of the device discriminators for the FedAvg baselines, the domain classifier's
   training for the label-related model.

``callbacks.GlobalAggregation`` only calls it at the end of every round and fires the round-end signal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedgen_pl.aggregation import RoundStats, aggregate, get_aggregation

RoundHook = Callable[[object], None]      # called with the model after the new global model is in place


class Cloud:
    def __init__(self, aggregation: str, tau_cloud: float, cloud_lr: float, hooks: Sequence[RoundHook] = ()):
        self.aggregation = aggregation
        self.rule = get_aggregation(aggregation)
        self.tau_cloud = float(tau_cloud)
        self.cloud_lr = float(cloud_lr)
        self.hooks = list(hooks)

    def round_stats(self, module) -> RoundStats:
        """L*_k = mean over the round's updates of G_k of sum_j w_kj L_kj (method §4); a member that made no
        update this round (every step skipped as non-finite) does not take part."""
        return RoundStats(
            community_loss=module.round_loss_sum / module.round_updates.clamp(min=1),
            sample_counts=module.generator_sample_counts,
            tau_cloud=self.tau_cloud,
            cloud_lr=self.cloud_lr,
            participating=module.round_updates > 0,
        )

    @torch.no_grad()
    def run_round(self, module) -> dict:
        """Aggregate, send the new global model down, run the hooks; returns the round's record."""
        stats = self.round_stats(module)
        new_state, weights = aggregate(self.rule, module.global_state(), module.community_state(), stats)
        left_out = int((~stats.participating).sum())
        module.counters["cloud_left_out"] = module.counters.get("cloud_left_out", 0) + left_out
        module.finish_round(new_state)
        for hook in self.hooks:
            hook(module)
        return {"round": module.round, "community_loss": stats.community_loss.tolist(),
                "cloud_weights": weights.tolist()}
