"""Many copies of one network, their parameters stacked on a leading dimension and run with ``vmap``.

Simulating hundreds of devices in one process is only fast if their networks run as one batched
computation. ``StackedModule`` holds ``n`` members of the same architecture: every parameter and
buffer has shape ``[n, *shape]`` and ``forward`` evaluates member ``i`` on input slice ``i`` with
``torch.func.vmap`` over ``functional_call`` (or, for convolutional networks on CPU, where it measured
faster, a loop of ``functional_call`` over the members: ``execution``). Because the members share no parameters, the gradient of
``sum_i loss_i`` with respect to member ``i``'s slice is exactly the gradient of ``loss_i``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


def _slot(name: str) -> str:
    # nn.Module attribute names cannot contain dots.
    return name.replace(".", "__")


class StackedModule(nn.Module):
    """``n`` members of one architecture with stacked parameters.

    Build it from a list of modules (each becomes one member, e.g. independently initialised device
    discriminators) or from one module and a count (every member starts as a copy of it).
    """

    def __init__(self, members: Sequence[nn.Module] | nn.Module, n: int | None = None, execution: str = "auto",
                 compile_mode: str = "none"):
        super().__init__()
        if execution not in ("auto", "vmap", "loop"):
            raise ValueError(f"StackedModule: execution must be auto, vmap or loop, got {execution!r}")
        if compile_mode not in ("none", "default", "reduce-overhead"):
            raise ValueError(f"StackedModule: compile_mode must be none, default or reduce-overhead, got {compile_mode!r}")
        self.member_execution = execution
        # torch.compile of the member computation (vmapped, or one member's call in the loop);
        # reduce-overhead adds CUDA graphs. Built lazily, kept out of the module tree.
        self.compile_mode = compile_mode
        self.__dict__["_compiled"] = {}
        if isinstance(members, nn.Module):
            if n is None or n < 1:
                raise ValueError("StackedModule(module, n) needs n >= 1")
            members = [members] * n
        members = list(members)
        if not members:
            raise ValueError("StackedModule needs at least one member")
        first = members[0]
        self.n = len(members)
        self.param_names = [name for name, _ in first.named_parameters()]
        self.buffer_names = [name for name, _ in first.named_buffers()]
        for name in self.param_names:
            stacked = torch.stack([dict(m.named_parameters())[name].detach() for m in members]).clone()
            self.register_parameter(_slot(name), nn.Parameter(stacked))
        for name in self.buffer_names:
            stacked = torch.stack([dict(m.named_buffers())[name].detach() for m in members]).clone()
            self.register_buffer(_slot(name), stacked)
        # The template only provides the forward code; its own tensors live on 'meta' and are never
        # used, and it is kept out of the module tree so it is not in state_dict or the optimiser.
        self.__dict__["template"] = copy.deepcopy(first).to("meta")
        self.convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in first.modules())

    # -- views ---------------------------------------------------------------------------------
    def stacked_params(self) -> dict[str, Tensor]:
        return {name: getattr(self, _slot(name)) for name in self.param_names}

    def stacked_buffers(self) -> dict[str, Tensor]:
        return {name: getattr(self, _slot(name)) for name in self.buffer_names}

    def stacked_state(self) -> dict[str, Tensor]:
        """Parameters and buffers by the template's names, each ``[n, *shape]``."""
        return {**self.stacked_params(), **self.stacked_buffers()}

    # -- compute -------------------------------------------------------------------------------
    def forward(self, *inputs: Tensor, frozen: bool = False, members: Tensor | None = None, **options) -> Tensor:
        """Member ``i`` applied to ``inputs[...][i]``; every input has leading dimension ``n``.

        ``members`` (int ``[m]``): run only those members (repeats allowed), inputs having leading
        dimension ``m``; gradients flow back to the selected slices. ``frozen=True`` uses detached
        parameters: gradients flow to the inputs only (a discriminator scoring generated samples for the
        generator's update). ``options`` go unchanged (not vmapped) to every member's ``forward``.
        """
        params, buffers = self.stacked_params(), self.stacked_buffers()
        if frozen:
            params = {name: p.detach() for name, p in params.items()}
        if members is not None:
            params = {name: p[members] for name, p in params.items()}
            buffers = {name: b[members] for name, b in buffers.items()}

        if self.execution(inputs[0]) == "vmap":
            return self._runner("vmap")(params, buffers, *inputs, **options)
        # A loop over members: the same maths, one network call each (faster than vmap's grouped
        # convolutions on CPU; benchmarks/RESULTS.md).
        # unbind, not v[i] per member: the backward of each v[i] allocates and zero-fills a whole stacked
        # gradient ([n, *shape], N^2 memory traffic; 1/3 of the CPU step), unbind's backward stacks once.
        call = self._runner("member")
        member_params = [dict(zip(params, parts)) for parts in zip(*(v.unbind(0) for v in params.values()))]
        member_buffers = ([dict(zip(buffers, parts)) for parts in zip(*(v.unbind(0) for v in buffers.values()))]
                          if buffers else [{}] * len(member_params))
        outputs = [call(member_params[i], member_buffers[i], *(x[i] for x in inputs), **options)
                   for i in range(inputs[0].shape[0])]
        if isinstance(outputs[0], tuple):      # several outputs (the VAE's reconstruction and KL terms)
            return tuple(torch.stack(parts) for parts in zip(*outputs))
        return torch.stack(outputs)

    def _member_call(self, member_params, member_buffers, *xs, **options):
        return functional_call(self.template, (member_params, member_buffers), xs, options)

    def _vmapped_call(self, params, buffers, *xs, **options):
        return vmap(lambda p, b, *x: self._member_call(p, b, *x, **options))(params, buffers, *xs)

    def _runner(self, kind: str):
        """The member computation (``vmap`` over members, or one ``member``), compiled when asked."""
        plain = self._vmapped_call if kind == "vmap" else self._member_call
        if self.compile_mode == "none":
            return plain
        if kind not in self._compiled:
            self._compiled[kind] = torch.compile(plain, mode=None if self.compile_mode == "default" else self.compile_mode)
        return self._compiled[kind]

    def execution(self, x: Tensor) -> str:
        """``vmap`` or ``loop``: ``self.member_execution``; ``auto`` = a loop for convolutional networks on
        CPU (vmap makes grouped convolutions there, measured slower), vmap everywhere else (for small MLPs
        the loop's per-call overhead dominates)."""
        if self.member_execution != "auto":
            return self.member_execution
        return "loop" if x.device.type == "cpu" and self.convolutional else "vmap"

    @torch.no_grad()
    def finite_grads(self) -> Tensor:
        """bool ``[n]``: every gradient entry of member i is finite (members without gradients: True)."""
        params = list(self.parameters())
        ok = torch.ones(self.n, dtype=torch.bool, device=params[0].device)
        for p in params:
            if p.grad is not None:
                ok &= torch.isfinite(p.grad).flatten(1).all(1)
        return ok

    # -- copying in and out --------------------------------------------------------------------
    @torch.no_grad()
    def member(self, i: int) -> nn.Module:
        """A standalone copy of member ``i`` (on the stacked tensors' device)."""
        state = {name: tensor[i].clone() for name, tensor in self.stacked_state().items()}
        module = copy.deepcopy(self.template).to_empty(device=next(iter(state.values())).device)
        module.load_state_dict(state)
        return module

    @torch.no_grad()
    def load_member(self, i: int, module: nn.Module) -> None:
        source = dict(module.state_dict())
        for name, tensor in self.stacked_state().items():
            tensor[i].copy_(source[name])

    @torch.no_grad()
    def broadcast(self, state: dict[str, Tensor]) -> None:
        """Set every member to ``state`` (unstacked tensors by template names)."""
        for name, tensor in self.stacked_state().items():
            tensor.copy_(state[name].unsqueeze(0).expand_as(tensor))

