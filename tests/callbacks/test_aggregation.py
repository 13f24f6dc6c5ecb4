"""The round-end callback: it runs the cloud round and broadcasts the new global model."""


import pytest
import torch

from callbacks import GlobalAggregation
from tests.conftest import build_system
from pytorch_lightning.plugins.precision import Precision


@pytest.mark.parametrize("cloud_lr", ["1", "auto"])
def test_callback_aggregates_and_broadcasts(cloud_lr):
    system, datamodule = build_system("federation.local_iters=2", f"federation.cloud_lr={cloud_lr}",
                                      "federation.tau_cloud=0.5")
    opt_g, opt_d = system.configure_optimizers()
    callback = GlobalAggregation()

    class _Trainer:
        should_stop = False

        precision_plugin = Precision()      # fp32: no autocast around the round
        loggers = []
        callbacks = []

    for _ in range(2):
        system.step_event(opt_g, opt_d)
    assert system.round_complete
    stats = system.federation.round_stats(0.5, 1.0 if cloud_lr == "1" else 3.0)
    a = torch.softmax(0.5 * stats.community_loss, 0)
    lr = 1.0 if cloud_lr == "1" else 3.0
    expected = {name: g + lr * (a.view(-1, *[1] * g.dim()) * (system.community_generators.stacked_state()[name] - g)).sum(0)
                for name, g in dict(system.global_generator.state_dict()).items()}
    if system.round_complete:      # as training_step does
        system.finished_round = system.end_round()
    callback.on_train_batch_end(_Trainer(), system, None, None, 0)
    assert system.round == 1 and system.local_iter == 0 and not system.round_complete
    for name, value in dict(system.global_generator.state_dict()).items():
        torch.testing.assert_close(value, expected[name])
        for k in range(system.num_communities):
            torch.testing.assert_close(system.community_generators.stacked_state()[name][k], value)
    torch.testing.assert_close(torch.tensor(callback.history[0]["cloud_weights"]), a)
    assert float(system.federation.round_updates.sum()) == 0
