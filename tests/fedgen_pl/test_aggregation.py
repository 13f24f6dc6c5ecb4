"""Edge and cloud maths against hand-computed numbers (docs/method.md §2, §3, §4)."""

import math

import pytest
import torch

from fedgen_pl.aggregation import (
    RoundStats,
    aggregate,
    cloud_weights,
    community_losses,
    edge_averages,
    fedavg,
    fedavg_average,
    fedavg_weights,
    get_aggregation,
    loss_softmax,
    segment_softmax,
    sync_edge_weights,
    weighted_step,
)
from tests.conftest import build_system


def test_segment_softmax_hand_computed():
    values = torch.tensor([1.0, 2.0, 3.0, 0.5])
    out = segment_softmax(values, torch.tensor([0, 0, 1, 1]), 2)
    # e^1/(e^1+e^2) = 1/(1+e); e^3/(e^3+e^0.5) = 1/(1+e^-2.5)
    torch.testing.assert_close(out, torch.tensor([0.268941, 0.731059, 0.924142, 0.075858]), atol=1e-6, rtol=0)


def test_sync_edge_weights_tau():
    losses = torch.tensor([-0.7, -0.2, -1.0, -1.0, -3.0])
    community = torch.tensor([0, 0, 1, 1, 1])
    # tau = 0: the plain mean of each community (the M-D GAN rule)
    torch.testing.assert_close(sync_edge_weights(losses, community, 2, 0.0),
                               torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))
    # tau = 2: softmax([-1.4, -0.4]) = [1/(1+e), e/(1+e)]; softmax([-2, -2, -6])
    e4 = math.exp(-4.0)
    expected = torch.tensor([0.268941, 0.731059, 1 / (2 + e4), 1 / (2 + e4), e4 / (2 + e4)])
    torch.testing.assert_close(sync_edge_weights(losses, community, 2, 2.0), expected, atol=1e-6, rtol=0)
    # weights are computed from detached losses
    assert not sync_edge_weights(losses.requires_grad_(), community, 2, 1.0).requires_grad


def test_community_losses_hand_computed():
    weights = torch.tensor([0.25, 0.75, 1.0])
    losses = torch.tensor([-1.0, -2.0, -0.5])
    out = community_losses(weights, losses, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(out, torch.tensor([-1.75, -0.5]))


def test_cloud_weights_hand_computed():
    l_star = torch.tensor([-1.0, -0.5, -2.0])
    # e^-1 = 0.367879, e^-0.5 = 0.606531, e^-2 = 0.135335, sum = 1.109745
    torch.testing.assert_close(cloud_weights(l_star, 1.0), torch.tensor([0.331499, 0.546549, 0.121952]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(cloud_weights(l_star, 0.0), torch.full((3,), 1 / 3))


def _states():
    global_state = {"w": torch.tensor([1.0, 2.0]), "count": torch.tensor([7])}
    community_state = {"w": torch.tensor([[2.0, 2.0], [0.0, 4.0]]), "count": torch.tensor([[1], [2]])}
    return global_state, community_state


def test_weighted_step_eq1_and_cloud_lr():
    g, gk = _states()
    a = torch.tensor([0.25, 0.75])
    # cloud_lr = 1: Eq. 1 as printed, the weighted average 0.25*[2,2] + 0.75*[0,4]
    torch.testing.assert_close(weighted_step(g, gk, a, 1.0)["w"], torch.tensor([0.5, 3.5]))
    # cloud_lr = 2: [1,2] + 2*(0.25*[1,0] + 0.75*[-1,2]) = [0, 5]
    torch.testing.assert_close(weighted_step(g, gk, a, 2.0)["w"], torch.tensor([0.0, 5.0]))
    # integer buffers are copied from G, never averaged
    assert weighted_step(g, gk, a, 2.0)["count"].tolist() == [7]


def test_loss_softmax_rule_tau0_is_plain_mean():
    g, gk = _states()
    stats = RoundStats(torch.tensor([-3.0, -0.1]), torch.tensor([10.0, 30.0]), tau_cloud=0.0, cloud_lr=1.0)
    new, weights = loss_softmax(g, gk, stats)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(new["w"], torch.tensor([1.0, 3.0]))
    # tau = 1: a = softmax([-3, -0.1]) = [1/(1+e^2.9), e^2.9/(1+e^2.9)] = [0.052154, 0.947846]
    stats.tau_cloud = 1.0
    new, weights = loss_softmax(g, gk, stats)
    torch.testing.assert_close(weights, torch.tensor([0.052154, 0.947846]), atol=1e-6, rtol=0)
    torch.testing.assert_close(new["w"], torch.tensor([0.104308, 3.895692]), atol=1e-5, rtol=0)


def test_fedavg_weights_by_samples():
    g, gk = _states()
    stats = RoundStats(torch.zeros(2), torch.tensor([10.0, 30.0]), tau_cloud=1.0, cloud_lr=1.0)
    new, weights = fedavg(g, gk, stats)
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(new["w"], torch.tensor([0.5, 3.5]))


def test_unknown_rule_is_named():
    from fedgen_pl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\(federation.aggregation\): unknown rule 'nope'.*loss_softmax"):
        get_aggregation("nope")


def test_round_community_loss_is_mean_of_edge_values():
    """L*_k = mean over the round's G_k updates of sum_j w_kj L_kj."""
    system, datamodule = build_system()
    opt_g, opt_d = system.configure_optimizers()
    per_step = []
    for _ in range(3):
        s = system.step_event(opt_g, opt_d)
        per_step.append(torch.stack([(s.edge_weights * s.device_loss)[system.federation.community_of_device == k].sum()
                                     for k in range(system.num_communities)]))
    torch.testing.assert_close(system.federation.round_stats(1.0, 1.0).community_loss, torch.stack(per_step).mean(0))


def test_aggregate_renormalises_over_the_participants():
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


def test_edge_averages_hand_computed_with_a_member_left_out():
    members = {"w": torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]]), "n": torch.tensor([[7], [8], [9], [6]])}
    stats = RoundStats(torch.tensor([-1.0, -3.0, -2.0, -9.0]), torch.tensor([10, 30, 60, 20]), 0.0, 1.0,
                       participating=torch.tensor([True, True, True, False]))
    edges, cloud = edge_averages(members, stats, torch.tensor([0, 0, 1, 1]), 2)
    # edge 0 = (10*[1,0] + 30*[3,2]) / 40 = [2.5, 1.5], loss (10*-1 + 30*-3) / 40 = -2.5;
    # edge 1 = member 2 alone (member 3 took no part): [5, 4], loss -2
    torch.testing.assert_close(edges["w"], torch.tensor([[2.5, 1.5], [5.0, 4.0]]))
    torch.testing.assert_close(cloud.community_loss, torch.tensor([-2.5, -2.0]))
    assert cloud.sample_counts.tolist() == [40, 60] and cloud.participating.tolist() == [True, True]
    assert edges["n"].tolist() == [[7], [7]]
    # the cloud's FedAvg of the edges: 0.4*[2.5, 1.5] + 0.6*[5, 4] = [4.0, 3.0]
    new, weights = aggregate(fedavg, {"w": torch.zeros(2), "n": torch.tensor([0])}, edges, cloud)
    torch.testing.assert_close(new["w"], torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.6]))

    # no member of edge 1 took part: the edge takes no part, and the cloud averages edge 0 alone
    stats.participating = torch.tensor([True, True, False, False])
    edges, cloud = edge_averages(members, stats, torch.tensor([0, 0, 1, 1]), 2)
    assert cloud.participating.tolist() == [True, False] and cloud.sample_counts.tolist() == [40, 0]
    new, weights = aggregate(fedavg, {"w": torch.zeros(2), "n": torch.tensor([0])}, edges, cloud)
    torch.testing.assert_close(new["w"], torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.0]))


def test_fedavg_hand_computed():
    members = {"w": torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]), "n": torch.tensor([[7], [8], [9]])}
    counts = torch.tensor([10, 30, 60])
    # flat: 0.1*[1,0] + 0.3*[3,2] + 0.6*[5,4] = [4.0, 3.0]
    torch.testing.assert_close(fedavg_weights(counts), torch.tensor([0.1, 0.3, 0.6]))
    # via edges {0, 1} and {2}: edge 0 = (10*[1,0] + 30*[3,2]) / 40 = [2.5, 1.5]; edge 1 = [5, 4];
    # cloud = 0.4*[2.5, 1.5] + 0.6*[5, 4] = [4.0, 3.0] -- the same as flat
    out = fedavg_average(members, counts, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(out["w"], torch.tensor([4.0, 3.0]))
    assert out["n"].tolist() == [7]


def test_fedavg_through_the_edges_stays_on_the_members_device():
    # the meta device stands in for a GPU: nothing may be created on the CPU beside the members
    members = {"w": torch.ones(4, 2, device="meta")}
    out = fedavg_average(members, torch.tensor([1, 2, 3, 4], device="meta"), torch.tensor([0, 0, 1, 1], device="meta"), 2)
    assert out["w"].device.type == "meta" and out["w"].shape == (2,)
