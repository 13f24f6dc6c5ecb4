"""The progress bar: round, local iteration, virtual time and the latest headline metric."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


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
