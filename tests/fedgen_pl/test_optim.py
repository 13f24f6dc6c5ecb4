"""StackedAdam: one independent Adam per member, with masks and per-member learning-rate scales."""

import torch

from fedgen_pl.optim import StackedAdam


def _grads(step, shape):
    g = torch.Generator().manual_seed(step)
    return torch.randn(shape, generator=g)


def test_equals_torch_adam_per_member():
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 4, 5))
    members = [torch.nn.Parameter(stacked[i].detach().clone()) for i in range(3)]
    opt = StackedAdam([stacked], members=3, lr=0.01, betas=(0.5, 0.99))
    refs = [torch.optim.Adam([p], lr=0.01, betas=(0.5, 0.99), foreach=False) for p in members]
    for step in range(5):
        grad = _grads(step, stacked.shape)
        stacked.grad = grad.clone()
        opt.step()
        for i, (p, ref) in enumerate(zip(members, refs)):
            p.grad = grad[i].clone()
            ref.step()
    for i, p in enumerate(members):
        torch.testing.assert_close(stacked[i], p, atol=1e-6, rtol=0)


def test_inactive_members_untouched_and_lr_scaled():
    torch.manual_seed(1)
    stacked = torch.nn.Parameter(torch.randn(3, 4))
    opt = StackedAdam([stacked], members=3, lr=0.1)
    stacked.grad = torch.ones(3, 4)
    opt.step()
    before = stacked.detach().clone()
    state_before = {k: v.clone() for k, v in opt.state[stacked].items()}
    stacked.grad = torch.ones(3, 4)
    opt.step(active=torch.tensor([True, False, True]), lr_scale=torch.tensor([1.0, 1.0, 3.0]))
    assert torch.equal(stacked[1], before[1])
    assert torch.equal(opt.state[stacked]["exp_avg"][1], state_before["exp_avg"][1])
    assert opt.state[stacked]["member_step"].tolist() == [2.0, 1.0, 2.0]
    # With a constant gradient Adam's update is lr * 1 (bias-corrected m/sqrt(v) = 1, up to eps)
    torch.testing.assert_close(before[0] - stacked[0], torch.full((4,), 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(before[2] - stacked[2], torch.full((4,), 0.3), atol=1e-5, rtol=0)


def test_masked_then_unmasked_steps_equal_per_member_adam():
    """Members that skipped steps keep their own step counts (bias correction) afterwards."""
    torch.manual_seed(2)
    stacked = torch.nn.Parameter(torch.randn(3, 6))
    members = [torch.nn.Parameter(stacked[i].detach().clone()) for i in range(3)]
    opt = StackedAdam([stacked], members=3, lr=0.05, betas=(0.5, 0.9))
    refs = [torch.optim.Adam([p], lr=0.05, betas=(0.5, 0.9), foreach=False) for p in members]
    masks = [None, torch.tensor([True, False, True]), torch.tensor([False, False, True]), None, None]
    for step, mask in enumerate(masks):
        grad = _grads(step, stacked.shape)
        stacked.grad = grad.clone()
        opt.step(active=mask)
        for i, (p, ref) in enumerate(zip(members, refs)):
            if mask is None or mask[i]:
                p.grad = grad[i].clone()
                ref.step()
    for i, p in enumerate(members):
        torch.testing.assert_close(stacked[i], p, atol=1e-6, rtol=0)
    assert opt.state[stacked]["member_step"].tolist() == [4.0, 3.0, 5.0]
