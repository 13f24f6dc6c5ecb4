"""A NaN in one device's discriminator is detected in the step, skipped and counted, or stops the run."""

import json

import pytorch_lightning as pl
import torch

from fedgen_pl.config import load_config
from fedgen_pl.errors import NonFiniteError
from fedgen_pl.train import train
from tests.conftest import SMALL_GRID

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
    assert model.federation.nonfinite_per_device.tolist() == [0, 0, 0, 6, 0, 0]
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
