"""The federation's maths as pure functions over tensors: edge weights, community losses, cloud
weights and the global aggregation rule (docs/method.md §2, §3, §4).

Nothing here knows about Lightning or optimisers. Devices are flat (``[N]``) with ``community`` giving
each device's community index in ``0..K-1``; model states are ``{name: tensor}`` dicts, a community
state holding every tensor stacked as ``[K, *shape]``.

Aggregation rules are registered by name (``federation.aggregation``). A rule receives the global
state, the stacked community states and a ``RoundStats`` and returns the new global state and the
community weights it used; write one function, decorate it with ``@register_aggregation("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fedgen_pl.errors import ConfigError

# -- edge tier ----------------------------------------------------------------------------------


def segment_softmax(values: Tensor, segment: Tensor, num_segments: int, mask: Tensor | None = None) -> Tensor:
    """Softmax of ``values`` within each segment: ``out[i] = exp(v_i) / sum_{j: seg_j = seg_i} exp(v_j)``.
    Entries outside ``mask`` (bool) get weight 0 and take no share."""
    if mask is not None:
        values = torch.where(mask, values, torch.full_like(values, float("-inf")))
    seg_max = torch.full((num_segments,), float("-inf"), dtype=values.dtype, device=values.device)
    seg_max = seg_max.scatter_reduce(0, segment, values, reduce="amax", include_self=True)
    seg_max = torch.where(torch.isinf(seg_max), torch.zeros_like(seg_max), seg_max)   # empty segments
    shifted = (values - seg_max[segment]).exp()
    totals = torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add(0, segment, shifted)
    return shifted / totals[segment].clamp(min=torch.finfo(values.dtype).tiny)


def segment_sum(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    return torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add(0, segment, values)


def sync_edge_weights(device_losses: Tensor, community: Tensor, num_communities: int, tau: float,
                      arrived: Tensor | None = None) -> Tensor:
    """Eq. 4: ``w_kj = softmax_j(tau * L_kj)`` over the devices of each community that reported
    (``arrived``, default all), from detached losses.

    tau = 1 is the printed rule, tau = 0 the plain mean (AsynDGAN / M-D GAN), tau < 0 favours devices
    whose discriminator is fooled less."""
    return segment_softmax(tau * device_losses.detach(), community, num_communities, arrived)


def async_edge_weights(staleness: Tensor, arrived: Tensor, community: Tensor, num_communities: int) -> Tensor:
    """Eq. 5: ``w_kj = exp(-s_kj) / |M_k|`` for the devices M_k arriving together, 0 for the others;
    not renormalised, so stale feedback counts less in absolute terms (docs/method.md §3)."""
    arrived_f = arrived.to(torch.float32)
    count = segment_sum(arrived_f, community, num_communities)
    return arrived_f * torch.exp(-staleness.to(torch.float32)) / count[community].clamp(min=1)


def community_losses(weights: Tensor, device_losses: Tensor, community: Tensor, num_communities: int) -> Tensor:
    """The edge's weighted loss ``sum_j w_kj * L_kj`` per community (detached), the value behind L*_k."""
    return segment_sum(weights.detach() * device_losses.detach(), community, num_communities)


# -- cloud tier ---------------------------------------------------------------------------------


def cloud_weights(community_loss: Tensor, tau: float) -> Tensor:
    """Eq. 1 weights ``a_k = softmax_k(tau * L*_k)``; tau = 0 gives the plain mean."""
    return torch.softmax(tau * community_loss.detach(), dim=0)


def weighted_step(global_state: dict[str, Tensor], community_state: dict[str, Tensor], weights: Tensor,
                  lr: float) -> dict[str, Tensor]:
    """``G + lr * sum_k a_k (G_k - G)`` for every floating-point tensor; other tensors (integer
    buffers such as counters) are taken from G unchanged. lr = 1 is the weighted average of Eq. 1."""
    new_state = {}
    for name, g in global_state.items():
        stacked = community_state[name]
        if not torch.is_floating_point(g):
            new_state[name] = g.clone()
            continue
        a = weights.to(g.dtype).view((-1,) + (1,) * g.dim())
        new_state[name] = g + lr * (a * (stacked - g.unsqueeze(0))).sum(0)
    return new_state


# -- rules --------------------------------------------------------------------------------------


@dataclass
class RoundStats:
    """What a round tells the cloud. ``community_loss`` is L*_k, ``sample_counts`` each community's
    number of training samples, ``tau_cloud`` and ``cloud_lr`` from the config."""

    community_loss: Tensor
    sample_counts: Tensor
    tau_cloud: float
    cloud_lr: float
    participating: Tensor | None = None     # bool [K]: members that updated this round (None: all)


AggregationRule = Callable[[dict, dict, RoundStats], "tuple[dict[str, Tensor], Tensor]"]
AGGREGATION_RULES: dict[str, AggregationRule] = {}


def register_aggregation(name: str):
    """Decorator: make ``fn(global_state, community_state, stats) -> (new_state, weights)`` selectable
    as ``federation.aggregation=name``."""

    def decorate(fn: AggregationRule) -> AggregationRule:
        if name in AGGREGATION_RULES:
            raise ValueError(f"aggregation rule '{name}' is already registered")
        AGGREGATION_RULES[name] = fn
        return fn

    return decorate


def get_aggregation(name: str) -> AggregationRule:
    if name not in AGGREGATION_RULES:
        raise ConfigError(f"unknown rule '{name}'; registered: {', '.join(sorted(AGGREGATION_RULES))} (add yours with "
                          f"@register_aggregation in a plugins= file)", where="federation.aggregation")
    return AGGREGATION_RULES[name]


def aggregate(rule: AggregationRule, global_state: dict, community_state: dict,
              stats: RoundStats) -> tuple[dict[str, Tensor], Tensor]:
    """Apply ``rule`` to the members that took part in the round only: the others get weight 0 and the
    rule's weights renormalise over the rest (whatever the rule); with none taking part G is unchanged."""
    part = stats.participating
    if part is None or bool(part.all()):
        return rule(global_state, community_state, stats)
    weights = torch.zeros_like(stats.community_loss)
    if not bool(part.any()):
        return {name: t.clone() for name, t in global_state.items()}, weights
    index = part.nonzero().flatten()
    sub_stats = RoundStats(stats.community_loss[index], stats.sample_counts[index], stats.tau_cloud, stats.cloud_lr,
                           None)
    new_state, sub_weights = rule(global_state, {n: t[index] for n, t in community_state.items()}, sub_stats)
    return new_state, weights.index_copy(0, index, sub_weights.to(weights.dtype))


@register_aggregation("loss_softmax")
def loss_softmax(global_state, community_state, stats: RoundStats):
    """The paper's Eq. 1 with this project's step size: a = softmax(tau_cloud * L*), G += lr * sum a (G_k - G)."""
    weights = cloud_weights(stats.community_loss, stats.tau_cloud)
    return weighted_step(global_state, community_state, weights, stats.cloud_lr), weights


@register_aggregation("fedavg")
def fedavg(global_state, community_state, stats: RoundStats):
    """FedAvg: communities weighted by their sample counts, G += lr * sum n_k/n (G_k - G)."""
    weights = fedavg_weights(stats.sample_counts).to(stats.community_loss.dtype)
    return weighted_step(global_state, community_state, weights, stats.cloud_lr), weights


# -- FedAvg -------------------------------------------------------------------------------------


def fedavg_weights(counts: Tensor) -> Tensor:
    """n_i / n (computed in float64)."""
    counts = counts.to(torch.float64)
    return (counts / counts.sum()).to(torch.float32)


def edge_averages(member_state: dict[str, Tensor], stats: RoundStats, edge_of_member: Tensor,
                  num_edges: int) -> tuple[dict[str, Tensor], RoundStats]:
    """FedAvg's edge tier: each edge's average of its members that took part, weighted by sample counts,
    ``E_k = sum_{j in k} (n_j / n_k) theta_j`` with ``n_k`` the total of those members, and the round as the
    cloud then sees it: K members with counts ``n_k``, losses the count-weighted means, taking part when any
    of theirs did. A count-weighted cloud average of the ``E_k`` is the flat average in exact arithmetic
    (method §9); in floats the two differ by rounding. Integer tensors come from member 0."""
    part = stats.participating
    if part is None:
        part = torch.ones_like(stats.sample_counts, dtype=torch.bool)
    counts = torch.where(part, stats.sample_counts.to(torch.float64), 0.0)
    totals = segment_sum(counts, edge_of_member, num_edges)
    safe_totals = torch.where(totals > 0, totals, 1.0)          # an edge none of whose members took part: weight 0
    within = (counts / safe_totals[edge_of_member]).to(torch.float32)
    edges = {}
    for name, stacked in member_state.items():
        if not torch.is_floating_point(stacked):
            edges[name] = stacked[:1].expand(num_edges, *stacked.shape[1:]).clone()
            continue
        out = torch.zeros(num_edges, *stacked.shape[1:], dtype=stacked.dtype, device=stacked.device)
        edges[name] = out.index_add_(0, edge_of_member, stacked * within.view((-1,) + (1,) * (stacked.dim() - 1)))
    loss = segment_sum(counts * stats.community_loss.to(torch.float64), edge_of_member, num_edges) / safe_totals
    edge_stats = RoundStats(loss.to(stats.community_loss.dtype), totals.to(stats.sample_counts.dtype),
                            stats.tau_cloud, stats.cloud_lr, totals > 0)
    return edges, edge_stats


def fedavg_average(member_state: dict[str, Tensor], counts: Tensor, edge_of_member: Tensor | None = None,
                   num_edges: int = 0) -> dict[str, Tensor]:
    """The count-weighted average of stacked members ``[n, ...]``. With ``edge_of_member``, through the
    edge tier (``edge_averages``): each edge averages its members by sample counts, the cloud averages the
    edges by their totals (method §9). Integer tensors come from member 0."""
    if edge_of_member is not None:
        stats = RoundStats(torch.zeros(len(counts), device=counts.device), counts, 0.0, 1.0)
        member_state, stats = edge_averages(member_state, stats, edge_of_member, num_edges)
        counts = stats.sample_counts
    weights = fedavg_weights(counts)
    return {name: (t * weights.view((-1,) + (1,) * (t.dim() - 1))).sum(0)
            if torch.is_floating_point(t) else t[0].clone() for name, t in member_state.items()}
