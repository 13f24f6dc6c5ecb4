"""The EMA of the global model (model.ema_decay): the average against a hand computation, evaluation
beside the raw generator, checkpoints."""

import torch

from fedgen_pl.federation import ema_average
from tests.conftest import build_system, tiny_image_run


def finish_round(system, state: dict) -> None:
    """A round whose aggregate is ``state``: G <- state, then the round closes (the EMA takes G in)."""
    system.global_generator.load_state_dict(state)
    system.close_round({})


def test_ema_average_equals_hand_computation_after_three_rounds():
    """ema_1 = G_1; ema_r = d_r ema_{r-1} + (1 - d_r) G_r with d_r = min(decay, r / (r + 9))."""
    system = build_system("model.ema_decay=0.5")[0]
    system.configure_model()
    model = system.global_model()
    states = []
    for r in range(1, 4):
        new = {name: torch.randn_like(value) for name, value in dict(system.global_generator.state_dict()).items()}
        finish_round(system, new)
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
    finish_round(system, {k: torch.zeros_like(v) for k, v in dict(system.global_generator.state_dict()).items()})
    finish_round(system, {k: torch.ones_like(v) for k, v in dict(system.global_generator.state_dict()).items()})
    labels = torch.zeros(4, dtype=torch.long)
    raw = system.sample_global(labels, torch.Generator().manual_seed(0))
    with system.ema_weights():
        averaged = system.sample_global(labels, torch.Generator().manual_seed(0))
        expected = 2 / 11     # d_2 = 2/11: ema = (2/11) * 0 + (9/11) * 1
        first = next(iter(system.global_model().state_dict().values()))
        torch.testing.assert_close(first, torch.full_like(first, 1 - expected))
    assert not torch.equal(raw, averaged)
    torch.testing.assert_close(system.sample_global(labels, torch.Generator().manual_seed(0)), raw)


def test_no_ema_when_the_decay_is_zero():
    system = build_system("model.ema_decay=0")[0]
    system.configure_model()
    assert system.ema is None
    assert not any(name.startswith("ema.") for name in system.state_dict())


def test_a_run_with_ema_evaluates_samples_and_exports_it(tmp_path, image_root, classifier_cache, capsys):
    import json

    import numpy as np

    from fedgen_pl.cli import main

    run_dir = tmp_path / "run"
    overrides = tiny_image_run(image_root, classifier_cache, run_dir, "federation.global_rounds=3",
                               "federation.local_iters=1", "metrics.eval_every=1", "model.ema_decay=0.9")
    assert main(["train", *overrides]) == 0
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    raw = {k for k in metrics if k.startswith("global/")}
    assert {f"ema/{k}" for k in raw} == {k for k in metrics if k.startswith("ema/")}   # the global scope's, for the EMA
    assert metrics["ema/global/fid_classifier"] != metrics["global/fid_classifier"]
    assert (run_dir / "plots" / "ema" / "samples_global.png").is_file()
    assert main(["eval", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "checkpoints" / "metrics.json").read_text())
    assert abs(evaluated["ema/global/fid_classifier"] - metrics["ema/global/fid_classifier"]) < 1e-9
    assert main(["sample", str(run_dir), "--n", "7", "--ema"]) == 0
    ema = np.load(run_dir / "checkpoints" / "samples_7_ema.npz")["x"]
    assert main(["sample", str(run_dir), "--n", "7"]) == 0
    assert not np.array_equal(ema, np.load(run_dir / "checkpoints" / "samples_7.npz")["x"])

    plain = tmp_path / "plain"
    assert main(["train", *[o for o in overrides if not o.startswith(("model.ema", "output_dir"))],
                 f"output_dir={plain}", "federation.global_rounds=1", "model.ema_decay=0"]) == 0
    capsys.readouterr()
    assert main(["sample", str(plain), "--n", "3", "--ema"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedgen: ") and "model.ema_decay" in err[0]
