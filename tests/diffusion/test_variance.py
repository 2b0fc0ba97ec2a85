"""Learned-range variance and the variational-bound term against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from pathseg.diffusion.schedules import NoiseSchedule
from pathseg.diffusion.variance import (
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    normal_kl,
    posterior_log_variance,
    vb_loss,
)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.named("linear", 100)


def test_normal_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5, atol=1e-6)


def test_learned_variance_spans_beta_tilde_to_beta(schedule: NoiseSchedule) -> None:
    t = torch.tensor([0, 1, 50, 99])
    ones = torch.ones(4, 1)
    top = learned_log_variance(schedule, ones, t).squeeze(1).double()
    bottom = learned_log_variance(schedule, -ones, t).squeeze(1).double()
    torch.testing.assert_close(top, schedule.betas[t].log(), rtol=1e-5, atol=1e-6)
    beta_tilde = schedule.betas * (1 - schedule.alphas_cumprod_prev) / (1 - schedule.alphas_cumprod)
    torch.testing.assert_close(bottom[1:], beta_tilde[t[1:]].log(), rtol=1e-5, atol=1e-6)
    assert bottom[0] == pytest.approx(float(beta_tilde[1].log()), rel=1e-5)  # t = 0 uses beta~_1
    middle = learned_log_variance(schedule, torch.zeros(4, 1), t).squeeze(1).double()
    torch.testing.assert_close(middle, (top + bottom) / 2, rtol=1e-5, atol=1e-6)
    assert posterior_log_variance(schedule).shape == (100,)


def test_discretized_gaussian_sums_to_one_over_the_bins() -> None:
    levels = torch.linspace(-1, 1, 256)
    mean, log_scale = torch.full_like(levels, 0.3), torch.full_like(levels, math.log(0.2))
    probs = discretized_gaussian_log_likelihood(levels, mean, log_scale).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-4)
    # An interior bin is the Normal's mass over [x - 1/255, x + 1/255].
    normal = torch.distributions.Normal(0.3, 0.2)
    x = levels[140]
    assert float(probs[140]) == pytest.approx(
        float(normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)), rel=1e-4
    )


def test_vb_is_zero_for_an_exact_mean_and_the_true_variance(schedule: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([5, 40, 99])
    x_t = schedule.add_noise(x0, noise, t)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # eps exact, variance beta~
    assert vb_loss(schedule, "epsilon", exact, x0, x_t, t).abs().max() < 1e-4
    # Variance beta instead of beta~: a real KL, large at small t where the two differ most.
    kl = vb_loss(schedule, "epsilon", torch.cat([noise, torch.ones_like(noise)], dim=1), x0, x_t, t)
    assert (kl >= 0).all() and kl[0] > 1e-2 and kl[0] > kl[1] >= kl[2]


def test_vb_trains_only_the_variance_half(schedule: NoiseSchedule) -> None:
    x0 = torch.ones(2, 1, 3, 3)
    noise = torch.randn(2, 1, 3, 3)
    t = torch.tensor([0, 30])  # the decoder term and the KL term
    x_t = schedule.add_noise(x0, noise, t)
    output = torch.zeros(2, 2, 3, 3, requires_grad=True)
    vb_loss(schedule, "epsilon", output, x0, x_t, t).sum().backward()
    assert output.grad[:, 0].abs().max() == 0  # the mean is detached
    assert output.grad[:, 1].abs().max() > 0
