"""Adam over stacked parameters: one independent Adam per member of a ``StackedModule``.

Adam is elementwise, so on stacked tensors ``torch.optim``'s own implementation already equals one
Adam per member while every member steps together; that common case goes straight to torch's fused
(or foreach) Adam kernel. Asynchronous training steps a subset of members (the devices whose feedback
arrived) and may scale a member's learning rate (stragglers take larger steps), so ``step`` also takes
an ``active`` mask and an ``lr_scale``; from the first masked step on, every member keeps its own step
count (``member_step``) and inactive members keep their parameters and moments bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam


class StackedAdam(torch.optim.Optimizer):
    def __init__(self, params, members: int, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"StackedAdam: lr must be > 0, got {lr}")
        self.members = members
        # uniform: every member has taken the same number of steps (the fast path applies)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, uniform=True))
        for group in self.param_groups:
            for p in group["params"]:
                if p.shape[0] != members:
                    raise ValueError(f"StackedAdam: parameter of shape {tuple(p.shape)} is not stacked over "
                                     f"{members} members")

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None, active: Tensor | None = None, lr_scale: Tensor | None = None):
        """One Adam step for the members in ``active`` (bool ``[members]``, default all), each with its
        learning rate multiplied by ``lr_scale[i]`` (default 1)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._init_state(p) for p in params]
            beta1, beta2 = group["betas"]
            if active is None and lr_scale is None and group["uniform"]:
                self._uniform_step(params, states, group["lr"], beta1, beta2, group["eps"])
                continue
            if active is not None:
                group["uniform"] = False
            for p, state in zip(params, states):
                if "member_step" not in state:
                    state["member_step"] = state["step"].expand(self.members).clone()
                _member_update(p, p.grad, state, group["lr"], beta1, beta2, group["eps"], active, lr_scale)
                if group["uniform"]:
                    state["step"].add_(1)
        return loss

    @staticmethod
    def _uniform_step(params, states, lr, beta1, beta2, eps) -> None:
        args = ([p for p in params], [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states])
        kwargs = dict(amsgrad=False, beta1=beta1, beta2=beta2, lr=lr, weight_decay=0.0, eps=eps, maximize=False)
        try:
            torch_adam(*args, fused=True, **kwargs)
        except RuntimeError:   # no fused kernel for this device or dtype
            torch_adam(*args, foreach=True, **kwargs)
        for s in states:
            if "member_step" in s:
                s["member_step"].add_(1)


def _member_update(p, grad, state, lr, beta1, beta2, eps, active, lr_scale):
    member_shape = (-1,) + (1,) * (p.dim() - 1)
    exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["member_step"]
    if active is None:
        step.add_(1)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    else:
        step.add_(active.to(step.dtype))
        mask = active.view(member_shape)
        exp_avg.copy_(torch.where(mask, exp_avg.lerp(grad, 1 - beta1), exp_avg))
        exp_avg_sq.copy_(torch.where(mask, exp_avg_sq * beta2 + (1 - beta2) * grad * grad, exp_avg_sq))
    # Members that never stepped have step 0; clamp keeps their (masked-out) update finite.
    safe_step = step.clamp(min=1)
    bias_correction1 = 1 - beta1 ** safe_step
    bias_correction2_sqrt = (1 - beta2 ** safe_step).sqrt()
    step_size = lr / bias_correction1
    if lr_scale is not None:
        step_size = step_size * lr_scale
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(member_shape)).add_(eps)
    update = exp_avg / denom * step_size.view(member_shape)
    if active is not None:
        update = torch.where(active.view(member_shape), update, torch.zeros_like(update))
    p.sub_(update)
