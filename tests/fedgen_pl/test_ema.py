"""The EMA of the global model (model.ema_decay): the average against a hand computation, evaluation
beside the raw generator, checkpoints."""

import torch

from fedgen_pl.federation import ema_average
from tests.conftest import build_system


def test_ema_average_equals_hand_computation_after_three_rounds():
    """ema_1 = G_1; ema_r = d_r ema_{r-1} + (1 - d_r) G_r with d_r = min(decay, r / (r + 9))."""
    system = build_system("model.ema_decay=0.5")[0]
    system.configure_model()
    model = system.global_model()
    states = []
    for r in range(1, 4):
        new = {name: torch.randn_like(value) for name, value in system.global_state().items()}
        system.finish_round(new)
        states.append(new)
    d2, d3 = min(0.5, 2 / 11), min(0.5, 3 / 12)        # 0.1818..., 0.25
    for name in states[0]:
        e1 = states[0][name]
        e2 = d2 * e1 + (1 - d2) * states[1][name]
        e3 = d3 * e2 + (1 - d3) * states[2][name]
        torch.testing.assert_close(system.ema.module.state_dict()[name], e3, rtol=1e-6, atol=1e-6)
        # the raw global model is untouched by the average
        torch.testing.assert_close(model.state_dict()[name], states[2][name])


def test_ema_decay_caps_the_warm_up():
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    ema_average(0.9)(averaged, current, torch.tensor(1000))     # r = 1001: d = min(0.9, 1001/1010) = 0.9
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.1))


def test_ema_weights_swap_in_and_back():
    system = build_system("model.ema_decay=0.9")[0]
    system.configure_model()
    system.finish_round({k: torch.zeros_like(v) for k, v in system.global_state().items()})
    system.finish_round({k: torch.ones_like(v) for k, v in system.global_state().items()})
    labels = torch.zeros(4, dtype=torch.long)
    raw = system.sample_global(labels, torch.Generator().manual_seed(0))
    with system.ema_weights():
        averaged = system.sample_global(labels, torch.Generator().manual_seed(0))
        expected = 2 / 11     # d_2 = 2/11: ema = (2/11) * 0 + (9/11) * 1
        first = next(iter(system.global_model().state_dict().values()))
        torch.testing.assert_close(first, torch.full_like(first, 1 - expected))
    assert not torch.equal(raw, averaged)
    torch.testing.assert_close(system.sample_global(labels, torch.Generator().manual_seed(0)), raw)


def test_no_ema_by_default():
    system = build_system()[0]
    system.configure_model()
    assert system.ema is None
    assert not any(name.startswith("ema.") for name in system.state_dict())
