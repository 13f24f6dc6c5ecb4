"""The pure maths of tiers.py against hand-computed values (method §2)."""

import math

import torch

from fedgen_pl.tiers import (device_iteration, device_losses, discriminator_loss, edge_generator_loss, finite_rows,
                             masked_mean, r1_penalty, sample_feedback, with_instance_noise, zero_rows)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_loss_by_hand():
    real, fake = torch.tensor([[0.0, 2.0]]), torch.tensor([[-1.0, 1.0]])
    expected = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(1.0)) / 2
    torch.testing.assert_close(discriminator_loss(real, fake), torch.tensor([expected]))
    judged = torch.tensor([[1.0, 0.0]])         # the second fake is left out
    expected = (softplus(0.0) + softplus(-2.0)) / 2 + softplus(-1.0)
    torch.testing.assert_close(discriminator_loss(real, fake, judged), torch.tensor([expected]))


def test_device_losses_by_hand():
    logits = torch.tensor([[0.5, -1.5]])
    printed = -(softplus(0.5) + softplus(-1.5)) / 2              # E[log(1 - D)] = -E[softplus(logit)]
    non_saturating = (softplus(-0.5) + softplus(1.5)) / 2        # -E[log D] = E[softplus(-logit)]
    loss, objective = device_losses(logits, "non_saturating")
    torch.testing.assert_close(loss, torch.tensor([printed]))
    torch.testing.assert_close(objective, torch.tensor([non_saturating]))
    loss, objective = device_losses(logits, "saturating")
    torch.testing.assert_close(objective, torch.tensor([printed]))


def test_masked_mean_of_a_row_without_kept_samples_is_zero():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    torch.testing.assert_close(masked_mean(values, torch.tensor([[1.0, 1.0], [0.0, 0.0]])), torch.tensor([2.0, 0.0]))


def test_feedback_and_edge_loss_give_the_weighted_gradient_by_hand():
    """Samples x = theta * z; objective l_j = mean_b x_jb^2 per device. Feedback d l_j / d x_jb = 2 x_jb / B;
    the edge's surrogate sum_j w_j <x_j, feedback_j> has gradient in theta sum_j w_j sum_b feedback_jb z_jb."""
    theta = torch.tensor(1.5, requires_grad=True)
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    x = (theta * z).detach().requires_grad_(True)
    feedback = sample_feedback((x ** 2).mean(1), x)
    torch.testing.assert_close(feedback, 2 * x.detach() / 2)
    weights = torch.tensor([0.25, 0.75])
    edge_generator_loss(theta * z, weights, feedback).backward()
    expected = sum(weights[j] * (feedback[j] * z[j]).sum() for j in range(2))
    torch.testing.assert_close(theta.grad, expected)


def test_finite_rows_and_zero_rows():
    values = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    keep = finite_rows(values, torch.tensor([1.0, float("inf")]))
    assert keep.tolist() == [False, False]
    assert finite_rows(values).tolist() == [False, True]
    torch.testing.assert_close(zero_rows(torch.ones(2, 3), torch.tensor([True, False])),
                               torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def one_weight_discriminator():
    """D(x) = a * x with a = 0.5, and an update that takes one SGD step of size 1 on D's loss."""
    a = torch.tensor(0.5, requires_grad=True)

    def discriminate(x, labels, frozen):
        return (a.detach() if frozen else a) * x

    def update(d_loss):
        (grad,) = torch.autograd.grad(d_loss.sum(), a)
        with torch.no_grad():
            a.sub_(grad)
        return torch.tensor([True])

    return a, discriminate, update


def test_device_iteration_with_a_one_weight_discriminator_by_hand():
    """D(x) = a * x, one device, SGD step of size 1 on D's loss: every number by hand."""
    a, discriminate, update = one_weight_discriminator()

    real, fake_d, fake_g = torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    d_loss, device_loss, feedback, stepped, penalty = device_iteration(
        discriminate, update, real, labels, fake_d, labels, fake_g, labels, "non_saturating")
    assert penalty.tolist() == [0.0]
    sigmoid = lambda v: 1 / (1 + math.exp(-v))       # noqa: E731
    # d_loss = softplus(-a) + softplus(-a) at a = 0.5; its gradient -2 sigmoid(-a)
    torch.testing.assert_close(d_loss, torch.tensor([2 * softplus(-0.5)]))
    a1 = 0.5 + 2 * sigmoid(-0.5)
    torch.testing.assert_close(a.detach(), torch.tensor(a1))
    # with the updated D: L = -softplus(a1 * 2); feedback d softplus(-a1 x) / dx = -a1 sigmoid(-a1 x)
    torch.testing.assert_close(device_loss, torch.tensor([-softplus(2 * a1)]))
    torch.testing.assert_close(feedback, torch.tensor([[-a1 * sigmoid(-2 * a1)]]))
    assert stepped.tolist() == [True]


def test_instance_noise_off_draws_nothing_and_on_adds_scaled_normal_draws():
    x, generator = torch.arange(6.0).view(1, 2, 3), torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert with_instance_noise(x, 0.0, generator) is x
    assert torch.equal(generator.get_state(), state)          # nothing drawn: a run without noise is unchanged
    expected = x + 0.25 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(with_instance_noise(x, 0.25, generator), expected)


def test_device_iteration_with_instance_noise_by_hand():
    """D(x) = a * x as above, noise std 0.5: D sees noisy reals and fakes, and the feedback is the gradient
    at the noisy G(z_g) (draws in order: real and G(z_d) together, then G(z_g))."""
    a, discriminate, update = one_weight_discriminator()

    draws = torch.Generator().manual_seed(7)
    n_real, n_fake = (0.5 * torch.randn(1, 2, generator=draws))[0].tolist()
    n_g = float(0.5 * torch.randn(1, 1, generator=draws))
    real, fake_d, fake_g = torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    d_loss, device_loss, feedback, _, _ = device_iteration(
        discriminate, update, real, labels, fake_d, labels, fake_g, labels, "saturating",
        instance_noise=0.5, generator=torch.Generator().manual_seed(7))
    sigmoid = lambda v: 1 / (1 + math.exp(-v))       # noqa: E731
    xr, xf, xg = 1 + n_real, -1 + n_fake, 2 + n_g
    # d_loss = softplus(-a xr) + softplus(a xf); d/da = -xr sigmoid(-a xr) + xf sigmoid(a xf)
    torch.testing.assert_close(d_loss, torch.tensor([softplus(-0.5 * xr) + softplus(0.5 * xf)]))
    a1 = 0.5 + xr * sigmoid(-0.5 * xr) - xf * sigmoid(0.5 * xf)
    torch.testing.assert_close(a.detach(), torch.tensor(a1))
    # saturating: l = L = -softplus(a1 xg); dl/dx at the noisy sample = -a1 sigmoid(a1 xg)
    torch.testing.assert_close(device_loss, torch.tensor([-softplus(a1 * xg)]))
    torch.testing.assert_close(feedback, torch.tensor([[-a1 * sigmoid(a1 * xg)]]))


def test_device_iteration_with_the_r1_penalty_by_hand():
    """D(x) = a * x, gamma 2: grad_x D = a, so the penalty is a^2 and D's loss and step gain gamma/2 a^2 and
    gamma a; the feedback is computed as without it (with the updated a)."""
    a, discriminate, update = one_weight_discriminator()

    real, fake_d, fake_g = torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    d_loss, device_loss, feedback, _, penalty = device_iteration(discriminate, update, real, labels, fake_d, labels,
                                                                 fake_g, labels, "non_saturating", r1_gamma=2.0)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))       # noqa: E731
    # returned apart: the GAN loss as without the penalty, the penalty a^2 (D minimised their sum gamma/2 a^2)
    torch.testing.assert_close(d_loss, torch.tensor([2 * softplus(-0.5)]))
    torch.testing.assert_close(penalty, torch.tensor([0.25]))
    a1 = 0.5 + 2 * sigmoid(-0.5) - 2 * 0.5
    torch.testing.assert_close(a.detach(), torch.tensor(a1))
    torch.testing.assert_close(device_loss, torch.tensor([-softplus(2 * a1)]))
    torch.testing.assert_close(feedback, torch.tensor([[-a1 * sigmoid(-2 * a1)]]))


def test_r1_penalty_is_each_rows_mean_squared_gradient_over_its_real_samples_only():
    """D(x) = sum_i w_n x_i^2 per sample of row n (grad 2 w_n x): rows [n, B'] with the first B real."""
    w = torch.tensor([1.0, -3.0])
    seen = torch.tensor([[[1.0, 2.0], [0.5, 0.0], [9.0, 9.0]],
                         [[0.0, 1.0], [1.0, 1.0], [9.0, 9.0]]], requires_grad=True)   # last column: fakes
    logits = (w[:, None, None] * seen**2).sum(2)
    expected = [((2 * 1.0) ** 2 * (1 + 4) + (2 * 1.0) ** 2 * 0.25) / 2,
                ((2 * 3.0) ** 2 * 1 + (2 * 3.0) ** 2 * 2) / 2]
    torch.testing.assert_close(r1_penalty(logits[:, :2], seen), torch.tensor(expected))
