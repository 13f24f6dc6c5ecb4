"""The cloud tier: global aggregation at the end of every round, as a Lightning callback.

The maths is the registered rule in ``fedgen_pl.aggregation`` (pure functions over state dicts);
this callback only decides when to call it, applies the result and logs the weights.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from fedgen_pl.aggregation import aggregate, get_aggregation


class GlobalAggregation(pl.Callback):
    def __init__(self):
        self.history: list[dict] = []   # per round: the community losses L*_k and weights a_k

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not pl_module.round_complete:
            return
        stats = pl_module.round_stats()
        rule = get_aggregation(pl_module.aggregation_name)
        new_state, weights = aggregate(rule, pl_module.global_state(), pl_module.community_state(), stats)
        left_out = 0 if stats.participating is None else int((~stats.participating).sum())
        pl_module.counters["cloud_left_out"] = pl_module.counters.get("cloud_left_out", 0) + left_out
        pl_module.finish_round(new_state)
        record = {"round": pl_module.round,
                  "community_loss": stats.community_loss.tolist(),
                  "cloud_weights": weights.tolist()}
        self.history.append(record)
        record["virtual_time"] = pl_module.clock.tick
        metrics = {f"cloud/weight_{k}": w for k, w in enumerate(record["cloud_weights"])}
        metrics.update({f"cloud/community_loss_{k}": v for k, v in enumerate(record["community_loss"])})
        metrics.update({f"bytes/{name}": value for name, value in pl_module.bytes.items()})
        metrics.update({f"faults/{name}": value for name, value in pl_module.counters.items()})
        pl_module.log_metrics(metrics)
        for logger in trainer.loggers:     # flush every round: a crash loses at most one round of logs
            logger.save()
        if pl_module.training_finished:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
