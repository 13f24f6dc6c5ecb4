"""The progress bar: round, local iteration, virtual time and the latest headline metric."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import Callback, TQDMProgressBar


class FederationProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items["round"] = f"{pl_module.round}/{pl_module.cfg.federation.global_rounds}"
        items["iter"] = f"{pl_module.local_iter}/{pl_module.cfg.federation.local_iters}"
        items["vtime"] = pl_module.clock.tick
        for callback in trainer.callbacks:
            headline = getattr(callback, "headline", None)
            if headline is not None:
                name, value = headline
                items[name] = f"{value:.4g}"
        return items


class PlainProgress(Callback):
    """One plain line per evaluation (round, virtual time, the global headline metrics), for logs and
    pipes: used when the progress bar is off or stderr is not a terminal."""

    HEADLINES = ("fid_classifier", "is_classifier", "acc", "class_consistency", "fid_inception", "modes_covered",
                 "high_quality_share")

    def __init__(self, stream=None):
        self.stream = stream
        self._printed_round = -1

    def on_round_end(self, trainer, pl_module) -> None:
        done = pl_module.round
        if done == self._printed_round:
            return
        for callback in trainer.callbacks:
            if getattr(callback, "_evaluated_round", None) == done:
                latest = {k.split("/", 1)[-1]: v for k, v in callback.latest.items()
                          if k.startswith("global/") or "/" not in k}
                shown = "  ".join(f"global/{k} {latest[k]:.4g}" for k in self.HEADLINES if k in latest)
                print(f"round {done}/{pl_module.cfg.federation.global_rounds}  virtual_time {pl_module.clock.tick}  "
                      f"{shown}", file=self.stream or sys.stdout, flush=True)
                self._printed_round = done
                return
