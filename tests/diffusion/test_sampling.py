"""DDIM / DDPM sampling and DDIM inversion with the exact denoiser of Gaussian data.

For data ``x0 ~ N(0, sigma^2 I)`` the marginal ``x_t`` is ``N(0, (ab sigma^2 + 1 - ab) I)`` and the
optimal predictions are linear in ``x_t``:

    eps* = sqrt(1 - ab) x_t / (ab sigma^2 + 1 - ab),    x0* = sqrt(ab) sigma^2 x_t / (ab sigma^2 + 1 - ab).

So every sampler step multiplies ``x`` by a known factor (plus known noise for DDPM), and the
end result can be predicted exactly here, without running pathseg or diffusers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pathseg.diffusion import Condition, Guidance, NoiseSchedule, Sampler, SamplerConfig
from pathseg.errors import ConfigError
from pathseg.models import UNet

SIGMA = 0.5


def alpha_bar(schedule: NoiseSchedule) -> np.ndarray:
    return np.cumprod(1.0 - schedule.betas.numpy())


def gaussian_denoiser(schedule: NoiseSchedule, prediction: str = "epsilon", sigma: float = SIGMA):
    """The exact ``model(x, t, cond)`` for ``x0 ~ N(0, sigma^2 I)``."""
    ab_all = torch.from_numpy(alpha_bar(schedule))

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        ab = ab_all[t.long()].view(-1, *([1] * (x.ndim - 1)))
        denom = ab * sigma**2 + 1 - ab
        eps = (1 - ab).sqrt() * x.double() / denom
        x0 = ab.sqrt() * sigma**2 * x.double() / denom
        out = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
        return out[prediction].float()

    return model


def ddim_gain(ab: np.ndarray, timesteps: list[int], sigma: float = SIGMA) -> float:
    """Factor by which deterministic DDIM (eta = 0) with the exact denoiser scales ``x_T``.

    One step from ``t`` to the next listed timestep (alpha_bar = 1 after the last) maps
    ``x -> (sqrt(a a') sigma^2 + sqrt((1 - a)(1 - a'))) / (a sigma^2 + 1 - a) * x``.
    """
    gain = 1.0
    for i, t in enumerate(timesteps):
        a = ab[t]
        a_next = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        gain *= (math.sqrt(a * a_next) * sigma**2 + math.sqrt((1 - a) * (1 - a_next))) / (
            a * sigma**2 + 1 - a
        )
    return gain


def ddpm_output_variance(ab: np.ndarray, timesteps: list[int], sigma: float = SIGMA) -> float:
    """Variance of ancestral sampling's result with the exact denoiser, starting from ``N(0, 1)``.

    Each step is ``x' = m x + sqrt(beta~) z`` with the posterior mean coefficients of q(x_{t'} | x_t, x0)
    for the pair (t, t'), and no noise on the last step.
    """
    var = 1.0
    for i, t in enumerate(timesteps):
        a = ab[t]
        a_prev = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        beta = 1 - a / a_prev
        c_x0 = math.sqrt(a_prev) * beta / (1 - a)
        c_xt = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        m = c_x0 * math.sqrt(a) * sigma**2 / (a * sigma**2 + 1 - a) + c_xt
        var = m**2 * var + (beta * (1 - a_prev) / (1 - a) if i + 1 < len(timesteps) else 0.0)
    return var


def inversion_gain(ab: np.ndarray, timesteps: list[int], sigma: float = SIGMA) -> float:
    """Factor by which DDIM inversion with the exact denoiser scales a clean ``x0``.

    The first step re-noises ``x0`` itself to the lowest timestep with the noise estimate taken there;
    every later step moves from the previous timestep ``p`` to ``t`` with the estimates taken at ``p``.
    """
    ascending = timesteps[::-1]
    first = ab[ascending[0]]
    gain = math.sqrt(first) + (1 - first) / (first * sigma**2 + 1 - first)
    for p, t in itertools.pairwise(ascending):
        a_p, a_t = ab[p], ab[t]
        gain *= (math.sqrt(a_t * a_p) * sigma**2 + math.sqrt((1 - a_t) * (1 - a_p))) / (
            a_p * sigma**2 + 1 - a_p
        )
    return gain


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# configuration and timesteps


@pytest.mark.parametrize(("num_steps", "steps"), [(1000, 50), (500, 50), (1000, 200)])
def test_trailing_spacing_starts_at_last_training_step(num_steps: int, steps: int) -> None:
    schedule = NoiseSchedule.named("scaled_linear", num_steps)
    timesteps = Sampler(schedule, "epsilon", SamplerConfig(steps=steps)).timesteps
    assert len(timesteps) == steps
    assert timesteps[0] == num_steps - 1
    stride = num_steps // steps
    assert timesteps == list(range(num_steps - 1, -1, -stride))[:steps]


def test_leading_spacing_ends_at_zero() -> None:
    timesteps = Sampler(
        NoiseSchedule.named("linear"), "epsilon", SamplerConfig(steps=50, spacing="leading")
    ).timesteps
    assert timesteps == list(range(980, -1, -20))


def test_full_chain_when_steps_is_none() -> None:
    for method in ("ddim", "ddpm"):
        sampler = Sampler(
            NoiseSchedule.named("linear", 300), "epsilon", SamplerConfig(method=method, steps=None)
        )
        assert sampler.timesteps == list(range(299, -1, -1))


def test_more_steps_than_training_steps_raises() -> None:
    schedule = NoiseSchedule.named("linear", 100)
    Sampler(schedule, "epsilon", SamplerConfig(steps=100))  # exactly T is fine
    with pytest.raises(ConfigError, match="exceeds"):
        Sampler(schedule, "epsilon", SamplerConfig(steps=101))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"method": "euler"}, "method"), ({"steps": 0}, "steps"), ({"eta": -0.1}, "eta")],
)
def test_sampler_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SamplerConfig(**kwargs)


def test_sample_needs_shape_or_noise() -> None:
    sampler = Sampler(NoiseSchedule.named("linear"), "epsilon", SamplerConfig(steps=2))
    with pytest.raises(ValueError, match="shape or noise"):
        sampler.sample(lambda x, t, c: torch.zeros_like(x))


def test_callback_called_once_per_step_in_order() -> None:
    schedule = NoiseSchedule.named("cosine")
    sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=20), clip_sample=None)
    seen: list[tuple[int, int, tuple, tuple]] = []
    out = sampler.sample(
        gaussian_denoiser(schedule),
        (2, 1, 4, 4),
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x, x0: seen.append((i, t, tuple(x.shape), tuple(x0.shape))),
    )
    assert [s[0] for s in seen] == list(range(20))
    assert [s[1] for s in seen] == sampler.timesteps
    assert all(s[2] == s[3] == (2, 1, 4, 4) for s in seen)
    assert out.shape == (2, 1, 4, 4)


# ---------------------------------------------------------------------------------------------
# DDIM


@pytest.mark.parametrize("name", ["scaled_linear", "linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddim_is_the_exact_linear_map_for_gaussian_data(name: str, prediction: str) -> None:
    """With the exact denoiser, DDIM (eta = 0) returns ``gain * x_T`` for every parameterisation."""
    schedule = NoiseSchedule.named(name)
    sampler = Sampler(schedule, prediction, SamplerConfig(steps=50), clip_sample=None)
    noise = normal((2, 1, 8, 8), 0)
    out = sampler.sample(gaussian_denoiser(schedule, prediction), noise=noise)
    gain = ddim_gain(alpha_bar(schedule), sampler.timesteps)
    torch.testing.assert_close(out, gain * noise, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("steps", "spacing"),
    [(50, "trailing"), (200, "trailing"), (50, "leading"), (7, "trailing"), (50, "linspace")],
)
def test_ddim_steps_land_on_the_next_listed_timestep(steps: int, spacing: str) -> None:
    """Each DDIM step goes from one timestep of ``Sampler.timesteps`` to the next, and the last one
    to the clean image (alpha_bar = 1), also when the spacing is not a whole stride of T / steps."""
    schedule = NoiseSchedule.named("scaled_linear")
    sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=steps, spacing=spacing), clip_sample=None)
    noise = normal((2, 1, 8, 8), 1)
    last: dict[str, torch.Tensor] = {}
    out = sampler.sample(
        gaussian_denoiser(schedule), noise=noise, callback=lambda i, t, x, x0: last.update(x=x, x0=x0)
    )
    torch.testing.assert_close(last["x"], last["x0"], rtol=1e-6, atol=1e-7)  # ends on the x0 estimate
    gain = ddim_gain(alpha_bar(schedule), sampler.timesteps)
    torch.testing.assert_close(out, gain * noise, rtol=1e-4, atol=1e-6)


def test_ddim_eta0_is_deterministic_and_ignores_the_generator() -> None:
    schedule = NoiseSchedule.named("scaled_linear")
    model = gaussian_denoiser(schedule)
    sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=25), clip_sample=None)
    noise = normal((2, 1, 8, 8), 2)
    a = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(0))
    b = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(1))
    c = sampler.sample(model, noise=noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_ddim_with_eta_depends_on_the_generator() -> None:
    schedule = NoiseSchedule.named("scaled_linear")
    model = gaussian_denoiser(schedule)
    sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=25, eta=1.0), clip_sample=None)
    noise = normal((2, 1, 8, 8), 2)
    a = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(0))
    b = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(0))
    c = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert relative_error(a, c) > 0.1


def test_ddim_output_std_matches_data_std() -> None:
    """4096 samples: the std estimate has ~1 % error; 200 DDIM steps shrink it by ~1 % (see ddim_gain)."""
    schedule = NoiseSchedule.named("scaled_linear")
    sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=200), clip_sample=None)
    out = sampler.sample(
        gaussian_denoiser(schedule), (4, 1, 32, 32), generator=torch.Generator().manual_seed(3)
    )
    assert out.std().item() == pytest.approx(SIGMA, rel=0.05)
    assert abs(out.mean().item()) < 4 * SIGMA / math.sqrt(out.numel())


def test_clip_sample_bounds_the_x0_estimate() -> None:
    """A sample-predicting model that always says 3: the result is 3, or 1 when clipped to [-1, 1]."""
    schedule = NoiseSchedule.named("linear")

    def model(x, t, c):
        return torch.full_like(x, 3.0)

    noise = normal((1, 1, 4, 4), 4)
    clipped = Sampler(schedule, "sample", SamplerConfig(steps=10), clip_sample=1.0).sample(model, noise=noise)
    unclipped = Sampler(schedule, "sample", SamplerConfig(steps=10), clip_sample=None).sample(
        model, noise=noise
    )
    torch.testing.assert_close(clipped, torch.ones_like(noise))
    torch.testing.assert_close(unclipped, torch.full_like(noise, 3.0))


# ---------------------------------------------------------------------------------------------
# DDPM


def test_ddpm_full_chain_output_variance() -> None:
    """1000 ancestral steps: the output variance matches the step-by-step prediction and sigma^2."""
    schedule = NoiseSchedule.named("scaled_linear")
    sampler = Sampler(schedule, "epsilon", SamplerConfig(method="ddpm", steps=None), clip_sample=None)
    assert len(sampler.timesteps) == 1000
    out = sampler.sample(
        gaussian_denoiser(schedule), (8, 1, 32, 32), generator=torch.Generator().manual_seed(5)
    )
    predicted = ddpm_output_variance(alpha_bar(schedule), sampler.timesteps)
    assert predicted == pytest.approx(SIGMA**2, rel=0.01)
    n = out.numel()
    assert out.var().item() == pytest.approx(predicted, abs=5 * predicted * math.sqrt(2 / (n - 1)))
    assert out.std().item() == pytest.approx(SIGMA, rel=0.05)


def test_ddpm_respaced_chain_output_variance() -> None:
    """250 respaced ancestral steps follow the same recursion over the visited timesteps."""
    schedule = NoiseSchedule.named("linear")
    sampler = Sampler(schedule, "epsilon", SamplerConfig(method="ddpm", steps=250), clip_sample=None)
    out = sampler.sample(
        gaussian_denoiser(schedule), (8, 1, 32, 32), generator=torch.Generator().manual_seed(6)
    )
    predicted = ddpm_output_variance(alpha_bar(schedule), sampler.timesteps)
    n = out.numel()
    assert out.var().item() == pytest.approx(predicted, abs=5 * predicted * math.sqrt(2 / (n - 1)))
    assert out.std().item() == pytest.approx(SIGMA, rel=0.05)


def test_ddpm_is_reproducible_per_seed_and_varies_across_seeds() -> None:
    schedule = NoiseSchedule.named("scaled_linear")
    model = gaussian_denoiser(schedule)
    sampler = Sampler(schedule, "epsilon", SamplerConfig(method="ddpm", steps=250), clip_sample=None)
    noise = normal((2, 1, 8, 8), 7)
    a = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(0))
    b = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(0))
    c = sampler.sample(model, noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # same start, independent step noise: the results are only partly correlated
    assert relative_error(a, c) > 0.3
    # with shape only, the seed fixes the initial noise too
    d = sampler.sample(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    e = sampler.sample(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(d, e, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# inversion


@pytest.mark.parametrize("name", ["scaled_linear", "linear", "cosine"])
def test_invert_recovers_the_starting_noise(name: str) -> None:
    """``invert(sample(x_T)) ~ x_T``: within 3 % at 200 steps, and closer than at 50 steps."""
    schedule = NoiseSchedule.named(name)
    model = gaussian_denoiser(schedule)
    noise = normal((4, 1, 32, 32), 8)
    errors = {}
    for steps in (50, 200):
        sampler = Sampler(schedule, "epsilon", SamplerConfig(steps=steps), clip_sample=None)
        x0 = sampler.sample(model, noise=noise)
        x_T = sampler.invert(model, x0)
        errors[steps] = relative_error(x_T, noise)
        if steps == 200:
            assert relative_error(sampler.sample(model, noise=x_T), x0) < 0.03
    assert errors[200] < 0.03
    assert errors[200] < errors[50]


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(("steps", "spacing"), [(20, "trailing"), (20, "leading"), (50, "linspace")])
def test_invert_is_the_exact_linear_walk_up_the_timesteps(prediction: str, steps: int, spacing: str) -> None:
    """Inversion of Gaussian data scales x0 by the product of the per-step factors (inversion_gain)."""
    schedule = NoiseSchedule.named("scaled_linear")
    sampler = Sampler(schedule, prediction, SamplerConfig(steps=steps, spacing=spacing), clip_sample=None)
    x0 = normal((2, 1, 8, 8), 9) * SIGMA
    x_T = sampler.invert(gaussian_denoiser(schedule, prediction), x0)
    gain = inversion_gain(alpha_bar(schedule), sampler.timesteps)
    torch.testing.assert_close(x_T, gain * x0, rtol=1e-4, atol=1e-6)


def test_invert_with_ddpm_raises() -> None:
    sampler = Sampler(NoiseSchedule.named("linear"), "epsilon", SamplerConfig(method="ddpm", steps=10))
    with pytest.raises(ConfigError, match="ddim"):
        sampler.invert(lambda x, t, c: torch.zeros_like(x), torch.zeros(1, 1, 2, 2))


# ---------------------------------------------------------------------------------------------
# with conditions and a real network


def test_sampler_passes_condition_and_guidance_to_the_model() -> None:
    calls: list[tuple[tuple, tuple]] = []

    def model(x, t, cond):
        calls.append((tuple(x.shape), tuple(cond.shape)))
        return torch.zeros_like(x[:, :1])

    sampler = Sampler(NoiseSchedule.named("linear"), "epsilon", SamplerConfig(steps=5))
    condition = Condition(image=torch.ones(3, 2, 4, 4), vector=torch.ones(3, 6))
    out = sampler.sample(model, (3, 1, 4, 4), condition=condition, guidance=Guidance(scale=3.0))
    assert out.shape == (3, 1, 4, 4)
    assert calls == [((6, 3, 4, 4), (6, 6))] * 5


def test_sample_with_tiny_unet() -> None:
    torch.manual_seed(0)
    net = UNet(out_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, time_embedding=True)
    sampler = Sampler(NoiseSchedule.named("scaled_linear"), "epsilon", SamplerConfig(steps=3))
    out = sampler.sample(net, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 16, 16)
    assert torch.isfinite(out).all()
    assert out.abs().max().item() <= 1.0 + 1e-6  # final step returns the clipped x0 estimate


# ---------------------------------------------------------------------------------------------
# learned variance


def test_learned_variance_ddpm_at_the_ends_matches_the_fixed_variances() -> None:
    """v = -1 is beta~ (diffusers' fixed_small) and v = +1 is beta (fixed_large), step for step."""
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule.named("linear", 200)
    mean_model = gaussian_denoiser(schedule)
    noise = normal((2, 1, 8, 8), 3)
    for v, fixed in ((-1.0, "fixed_small"), (1.0, "fixed_large")):

        def learned(x, t, cond, v=v):
            eps = mean_model(x, t, cond)
            return torch.cat([eps, torch.full_like(eps, v)], dim=1)

        sampler = Sampler(
            schedule, "epsilon", SamplerConfig(method="ddpm", steps=50), None, learned_variance=True
        )
        got = sampler.sample(learned, noise=noise, generator=torch.Generator().manual_seed(0))
        reference = Sampler(schedule, "epsilon", SamplerConfig(method="ddpm", steps=50), None)
        reference.scheduler = DDPMScheduler.from_config(reference.scheduler.config, variance_type=fixed)
        reference.scheduler.set_timesteps(50)
        want = reference.sample(mean_model, noise=noise, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_learned_variance_ddim_uses_the_mean_half_only() -> None:
    schedule = NoiseSchedule.named("linear", 200)
    mean_model = gaussian_denoiser(schedule)

    def learned(x, t, cond):
        eps = mean_model(x, t, cond)
        return torch.cat([eps, torch.randn_like(eps)], dim=1)  # v must not matter

    noise = normal((2, 1, 8, 8), 4)
    got = Sampler(schedule, "epsilon", SamplerConfig(steps=20), None, learned_variance=True).sample(
        learned, noise=noise
    )
    want = Sampler(schedule, "epsilon", SamplerConfig(steps=20), None).sample(mean_model, noise=noise)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
