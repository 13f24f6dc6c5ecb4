"""Differential privacy (fedgen_pl/privacy.py, docs/method.md §15): the accountant against published and
hand-computed values, the clipping bounds, the noise's variance, the keys' checks, and that no noise is no
change at all."""

import csv
import math

import pytest
import torch

from fedgen_pl import privacy
from fedgen_pl.cli import main
from fedgen_pl.config import load_config
from fedgen_pl.recipes import recipe_of
from tests.conftest import SMALL_GRID

GRID = [*SMALL_GRID, "federation.global_rounds=2", "federation.local_iters=2", "trainer.progress_bar=false",
        "metrics.eval_every=1"]


# -- accounting -----------------------------------------------------------------------------------------------
def test_the_accountant_gives_opacus_documented_value():
    """Opacus' own test (opacus/tests/accountants_test.py): sigma 1.5, q 0.04, 90 epochs -> eps 7.32911117143 at
    delta 1e-5 with its RDP accountant (the same analysis our ``epsilon`` calls, here at q = 0.04)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=0.04, noise_multiplier=1.5, steps=int(90 / 0.04),
                                                              orders=orders), delta=1e-5)
    assert eps == pytest.approx(7.32911117143, abs=1e-9)


def test_a_message_of_r_vectors_is_a_gaussian_mechanism_of_noise_sigma_over_2_sqrt_r():
    """Hand computation: r vectors of sensitivity 2C and noise sigma C each give RDP alpha * 2r / sigma^2 per
    message (T messages: T times that); the conversion to eps is Opacus' (Balle et al. 2020)."""
    sigma, r, T, delta = 30.0, 65, 200, 1e-5
    orders = privacy.ORDERS
    hand_rdp = [a * 2 * r * T / sigma ** 2 for a in orders]
    hand_eps = min(rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
                   for a, rdp in zip(orders, hand_rdp))
    assert privacy.accountant_noise(sigma, r) == pytest.approx(sigma / (2 * math.sqrt(65)))
    assert privacy.epsilon(sigma, r, T, delta) == pytest.approx(hand_eps, rel=1e-9)


def test_a_target_epsilon_solves_the_noise_to_within_the_tolerance():
    sigma = privacy.noise_for_epsilon(10.0, 65, 500, 1e-5)
    assert 9.99 - 0.01 <= privacy.epsilon(sigma, 65, 500, 1e-5) <= 10.0
    assert privacy.epsilon(sigma * 0.95, 65, 500, 1e-5) > 10.0      # less noise would overspend


def test_no_noise_is_infinite_epsilon_and_no_messages_spend_nothing():
    assert privacy.epsilon(0.0, 65, 100, 1e-5) == math.inf
    assert privacy.epsilon(5.0, 65, 0, 1e-5) == 0.0


# -- the mechanisms -------------------------------------------------------------------------------------------
def test_clipped_feedback_never_exceeds_c_and_the_loss_stays_in_its_bound():
    g = torch.Generator().manual_seed(0)
    B, C, b = 16, 0.7, 3.0
    feedback = torch.randn(3, B, 1, 4, 4, generator=g) * torch.logspace(-3, 2, B).view(1, B, 1, 1, 1)
    loss = torch.tensor([-10.0, -1.0, 0.0])
    sent_loss, sent = privacy.sanitize_feedback(loss, feedback, C, b, 0.0, g)
    norms = (sent * B).flatten(2).norm(dim=2)                  # per sample, as the gradient of the batch sum
    assert bool((norms <= C * (1 + 1e-6)).all())
    small = (feedback * B).flatten(2).norm(dim=2) < C          # below the bound: passed unchanged
    assert torch.allclose(sent[small], feedback[small])
    assert sent_loss.tolist() == [-3.0, -1.0, 0.0]


def test_a_clipped_update_never_exceeds_c_over_all_tensors_and_counters_pass():
    g = torch.Generator().manual_seed(1)
    start = {"w": torch.zeros(4, 3, 3), "b": torch.ones(4, 3), "n": torch.zeros(4, dtype=torch.long)}
    local = {"w": torch.randn(4, 3, 3, generator=g) * 10, "b": 1 + torch.randn(4, 3, generator=g) * 10,
             "n": torch.full((4,), 7)}
    sent = privacy.sanitize_updates(local, start, 2.0, 0.0, g)
    update = torch.cat([(sent["w"] - start["w"]).flatten(1), (sent["b"] - start["b"]).flatten(1)], 1)
    assert torch.allclose(update.norm(dim=1), torch.full((4,), 2.0), rtol=1e-5)   # all were above C: on it
    assert sent["n"].tolist() == [7, 7, 7, 7]


def test_the_noise_has_the_stated_variance():
    """Zero messages in, noise out: feedback N(0, (sigma C)^2) per coordinate (as the batch-sum gradient),
    the loss N(0, (sigma b / 2)^2), updates N(0, (sigma C)^2). Sample variances of 10^5 draws (relative
    standard error 0.45%) within 3%."""
    g = torch.Generator().manual_seed(2)
    sigma, C, b, B = 2.5, 0.4, 3.0, 50
    loss, sent = privacy.sanitize_feedback(torch.zeros(100_000), torch.zeros(40, B, 50), C, b, sigma, g)
    assert (sent * B).var().item() == pytest.approx((sigma * C) ** 2, rel=0.03)
    assert (sent * B).mean().item() == pytest.approx(0.0, abs=0.01)
    # the loss starts at 0 and is clamped into [-b, 0] first: the noise is all that is left
    assert loss.var().item() == pytest.approx((sigma * b / 2) ** 2, rel=0.03)
    start = {"w": torch.zeros(10, 10_000)}
    update = privacy.sanitize_updates({"w": torch.zeros(10, 10_000)}, start, C, sigma, g)["w"]
    assert update.var().item() == pytest.approx((sigma * C) ** 2, rel=0.03)


# -- keys and runs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["model.name=centralized_gan", "privacy.noise_multiplier=1"], "privacy.noise_multiplier"),
    (["model.name=centralized_vae", "privacy.target_epsilon=5"], "privacy.target_epsilon"),
    (["model.name=fed_gan", "privacy.noise_multiplier=1", "privacy.loss_bound=2"], "privacy.loss_bound"),
    (["privacy.clip=2"], "privacy.clip"),
    (["privacy.noise_multiplier=1", "privacy.target_epsilon=3"], "privacy.target_epsilon"),
    (["federation.update=async", "privacy.target_epsilon=3"], "privacy.target_epsilon"),
    (["privacy.target_epsilon=1e-9"], "privacy.target_epsilon"),
    (["privacy.delta=1.5", "privacy.noise_multiplier=1"], "privacy.delta"),
])
def test_a_privacy_key_where_it_means_nothing_exits_2_naming_it(overrides, key, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *GRID, *overrides, f"output_dir={run}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedgen: configuration error ({key}): ")
    assert not run.exists()


def test_no_noise_is_bit_identical_to_no_privacy_block_and_never_sanitises(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sanitised without noise")

    monkeypatch.setattr("fedgen_pl.gan.sanitize_feedback", refuse)
    monkeypatch.setattr("fedgen_pl.federation.sanitize_updates", refuse)
    rows = {}
    for name, extra in (("plain", []), ("zero", ["privacy.noise_multiplier=0.0"])):
        assert main(["train", *GRID, *extra, f"output_dir={tmp_path / name}"]) == 0
        with open(tmp_path / name / "metrics.csv") as f:
            rows[name] = list(csv.reader(f))
        assert not any("privacy/epsilon" in row for row in rows[name])
    assert rows["plain"] == rows["zero"]
    plain = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    zero = torch.load(tmp_path / "zero" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(plain[k], zero[k]) for k in plain)


@pytest.mark.parametrize("model", ["fedgen_fr", "fed_gan"])
def test_a_private_run_reports_the_epsilon_it_spent_and_sanitises_only_what_leaves(model, tmp_path, monkeypatch):
    """Feedback models sanitise their feedback; FedAvg models their round updates only (their feedback
    never leaves the device: each device trains its own G against its own D)."""
    import json

    calls = {"feedback": 0, "updates": 0}
    for name in calls:
        original = getattr(privacy, f"sanitize_{name}")
        monkeypatch.setattr(f"fedgen_pl.{'gan' if name == 'feedback' else 'federation'}.sanitize_{name}",
                            lambda *args, _name=name, _f=original: (calls.__setitem__(_name, calls[_name] + 1), _f(*args))[1])
    run = tmp_path / "run"
    assert main(["train", *GRID, f"model.name={model}", "privacy.noise_multiplier=50", f"output_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    cfg = load_config([*GRID, f"model.name={model}", "privacy.noise_multiplier=50"])
    p = privacy.privacy_of(cfg, recipe_of(model))
    messages = summary["iterations"] if p.mechanism == "feedback" else summary["rounds"]
    assert summary["privacy"]["messages"] == messages
    assert summary["privacy"]["epsilon"] == pytest.approx(p.epsilon(messages))
    with open(run / "metrics.csv") as f:
        spent = [float(r["privacy/epsilon"]) for r in csv.DictReader(f) if r.get("privacy/epsilon")]
    assert len(spent) == 2 and spent[0] < spent[1] == pytest.approx(summary["privacy"]["epsilon"])
    if p.mechanism == "feedback":
        assert calls == {"feedback": summary["iterations"], "updates": 0}
    else:   # G at every round end, D at every average
        assert calls == {"feedback": 0, "updates": 2 * summary["rounds"]}


def test_table_headers_carry_the_epsilon_their_runs_spent_and_plain_runs_none():
    from fedgen_pl.table import _header

    assert _header("M-D GAN, eps 10", [{"privacy": {"epsilon": 9.9961}}, {"privacy": {"epsilon": 9.9958}}]) == \
        "M-D GAN, eps 10 (ε = 10)"
    assert _header("FR sync", [{"privacy": {"mechanism": "none", "epsilon": None}}, {}]) == "FR sync"
    assert _header("x", [{"privacy": {"epsilon": 1.0}}, {"privacy": {"epsilon": 2.5}}]) == "x (ε = 1–2.5)"


def test_a_run_with_a_target_epsilon_cannot_be_resumed_for_more_rounds(tmp_path, capsys):
    """Its noise was solved for its schedule; more rounds at that noise would spend more than the target while
    the target solved again would report less than was spent."""
    run = tmp_path / "run"
    assert main(["train", *GRID, "privacy.target_epsilon=10", f"output_dir={run}"]) == 0
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["train", f"resume={run}", "federation.global_rounds=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedgen: configuration error (federation.global_rounds): resume: ")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
