"""The cloud round (the model's end_round): a community without a finite step takes no part in it."""

import json

import pytorch_lightning as pl
import torch

from fedgen_pl.config import load_config
from fedgen_pl.train import train
from tests.conftest import SMALL_GRID

FAST = [*SMALL_GRID, "federation.global_rounds=3", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.progress_bar=false", "trainer.log_every_n_iters=1"]


class PoisonCommunity(pl.Callback):
    """NaN in both discriminators of community 1: its edge gets no finite feedback, G_1 never steps."""

    def on_train_start(self, trainer, pl_module):
        with torch.no_grad():
            first = next(iter(pl_module.device_discriminators.stacked_params().values()))
            first[2:4].fill_(float("nan"))


def test_a_community_without_a_finite_step_takes_no_part_in_the_cloud_round(tmp_path):
    import csv

    run = train(load_config([*FAST, f"output_dir={tmp_path / 'run'}"]), extra_callbacks=[PoisonCommunity()])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["faults"]["cloud_left_out"] == 3 and summary["faults"]["nonfinite_generator_skipped"] == 6
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("cloud/weight_0")]
    assert len(rows) == 3
    for row in rows:   # before the fix L*_1 was 0, the largest possible value, and took the largest weight
        weights = [float(row[f"cloud/weight_{k}"]) for k in range(3)]
        assert weights[1] == 0.0 and abs(weights[0] + weights[2] - 1) < 1e-6
        assert float(row["cloud/community_loss_1"]) == 0.0
