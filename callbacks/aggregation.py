"""The end of a round, as a Lightning callback: after the training step that ran the cloud's round (the
model's ``end_round``), its log, then one round-end signal that the evaluation, checkpoint and progress
callbacks subscribe to (``on_round_end(trainer, pl_module)``, called in the order of the trainer's
callback list)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class GlobalAggregation(pl.Callback):
    def __init__(self):
        self.history: list[dict] = []   # per round: the community losses L*_k and weights a_k

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record, pl_module.finished_round = pl_module.finished_round, None
        if record is None:
            return
        self.history.append(record)
        # a_k where the cloud aggregated (local-only VAEs have none)
        metrics = {f"cloud/weight_{k}": w for k, w in enumerate(record.get("cloud_weights", []))}
        metrics.update({f"cloud/community_loss_{k}": v for k, v in enumerate(record["community_loss"])})
        metrics.update({f"bytes/{name}": value for name, value in pl_module.bytes.items()})
        metrics.update({f"faults/{name}": value for name, value in pl_module.counters.items()})
        pl_module.log_metrics(metrics)
        for logger in trainer.loggers:     # flush every round: a crash loses at most one round of logs
            logger.save()
        if pl_module.training_finished:
            trainer.should_stop = True
        for callback in getattr(trainer, "callbacks", []):     # the round-end signal
            if callback is not self and hasattr(callback, "on_round_end"):
                callback.on_round_end(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
