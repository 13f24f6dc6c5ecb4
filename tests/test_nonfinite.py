"""A NaN in one device's discriminator is detected in the step, skipped and counted, or stops the run."""

import json

import pytorch_lightning as pl
import torch

from conftest import SMALL_GRID
from fedgen_pl.config import load_config
from fedgen_pl.federation import NonFiniteError
from fedgen_pl.train import train

FAST = [*SMALL_GRID, "federation.global_rounds=3", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.progress_bar=false", "trainer.log_every_n_iters=1"]
BROKEN = 3      # community 1, device 1 (two devices per community)


class PoisonDevice(pl.Callback):
    """Sets one device's discriminator weights to NaN before training."""

    def on_train_start(self, trainer, pl_module):
        self.before = {k: v.clone() for k, v in pl_module.device_discriminators.stacked_params().items()}
        with torch.no_grad():
            first = next(iter(pl_module.device_discriminators.stacked_params().values()))
            first[BROKEN].fill_(float("nan"))
        self.module = pl_module


def test_nan_device_is_skipped_counted_and_never_reaches_the_generator(tmp_path):
    poison = PoisonDevice()
    run = train(load_config([*FAST, f"output_dir={tmp_path / 'run'}"]), extra_callbacks=[poison])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 3
    assert summary["faults"]["nonfinite_skipped"] == 6          # every one of its 6 local iterations
    model = poison.module
    assert model.nonfinite_per_device.tolist() == [0, 0, 0, 6, 0, 0]
    for name, value in model.global_generator.state_dict().items():
        assert torch.isfinite(value).all(), name
    for name, value in model.device_discriminators.stacked_params().items():
        others = [n for n in range(6) if n != BROKEN]
        assert torch.isfinite(value[others]).all(), name
        assert not torch.equal(value[others], poison.before[name][others]), name   # the others trained
        if name != next(iter(poison.before)):
            assert torch.equal(value[BROKEN], poison.before[name][BROKEN]), name   # its update skipped


def test_nan_device_stops_the_run_with_its_name(tmp_path):
    try:
        train(load_config([*FAST, "trainer.nonfinite=stop", f"output_dir={tmp_path / 'run'}"]),
              extra_callbacks=[PoisonDevice()])
    except NonFiniteError as err:
        message = str(err)
    else:
        raise AssertionError("the run did not stop")
    assert "community 1 (1:gaussian_grid), device 1" in message and "iteration 0 (round 0)" in message
    assert (tmp_path / "run" / "checkpoints" / "crash.ckpt").is_file()


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


def test_aggregate_renormalises_over_the_participants():
    from fedgen_pl.aggregation import RoundStats, aggregate, loss_softmax

    g = {"w": torch.zeros(2)}
    members = {"w": torch.tensor([[1.0, 1.0], [10.0, 10.0], [3.0, 3.0]])}
    losses = torch.tensor([-1.0, 0.0, -2.0])
    stats = RoundStats(losses, torch.ones(3), tau_cloud=1.0, cloud_lr=1.0,
                       participating=torch.tensor([True, False, True]))
    new, weights = aggregate(loss_softmax, g, members, stats)
    a = torch.softmax(torch.tensor([-1.0, -2.0]), 0)          # by hand: member 1 left out
    torch.testing.assert_close(weights, torch.tensor([a[0], 0.0, a[1]]))
    torch.testing.assert_close(new["w"], (a[0] * 1.0 + a[1] * 3.0).repeat(2))
    nobody = RoundStats(losses, torch.ones(3), 1.0, 1.0, torch.zeros(3, dtype=torch.bool))
    new, weights = aggregate(loss_softmax, g, members, nobody)
    assert torch.equal(new["w"], g["w"]) and not weights.any()
