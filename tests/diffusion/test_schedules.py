"""Noise schedules and the forward process against closed forms computed here with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathseg.diffusion import SCHEDULES, NoiseSchedule, make_betas
from pathseg.errors import ConfigError


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cosine_f(t: np.ndarray, num_steps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's unnormalised ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``."""
    return np.cos((t / num_steps + s) / (1 + s) * np.pi / 2) ** 2


def alpha_bar_by_loop(betas: np.ndarray) -> np.ndarray:
    """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` with an explicit running product."""
    out, running = [], 1.0
    for beta in betas:
        running *= 1.0 - beta
        out.append(running)
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# make_betas


@pytest.mark.parametrize("num_steps", [1000, 500])
def test_linear_endpoints_scale_with_chain_length(num_steps: int) -> None:
    """DDPM's 1e-4..0.02 are both scaled by 1000 / T, with even spacing in between."""
    betas = make_betas("linear", num_steps).numpy()
    assert betas.shape == (num_steps,)
    assert betas[0] == pytest.approx(1e-4 * 1000 / num_steps, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * 1000 / num_steps, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (betas[-1] - betas[0]) / (num_steps - 1), rtol=1e-9)


def test_linear_explicit_endpoints_are_not_rescaled() -> None:
    betas = make_betas("linear", 500, beta_start=0.001, beta_end=0.03).numpy()
    np.testing.assert_allclose(betas, np.linspace(0.001, 0.03, 500), rtol=1e-12)


@pytest.mark.parametrize("name", ["scaled_linear", "quadratic"])
@pytest.mark.parametrize("num_steps", [1000, 500])
def test_scaled_linear_and_quadratic_are_squared_linspace(name: str, num_steps: int) -> None:
    """``linspace(sqrt(1e-4), sqrt(0.02))**2`` with no length rescaling; "quadratic" is an alias."""
    expected = np.linspace(math.sqrt(1e-4), math.sqrt(0.02), num_steps) ** 2
    np.testing.assert_allclose(make_betas(name, num_steps).numpy(), expected, rtol=1e-12)


def test_scaled_linear_custom_endpoints_stedm() -> None:
    expected = np.linspace(math.sqrt(0.0015), math.sqrt(0.0205), 1000) ** 2
    betas = make_betas("scaled_linear", 1000, beta_start=0.0015, beta_end=0.0205).numpy()
    np.testing.assert_allclose(betas, expected, rtol=1e-12)


@pytest.mark.parametrize("num_steps", [1000, 250])
def test_cosine_alpha_bar_matches_closed_form_where_unclipped(num_steps: int) -> None:
    """``alpha_bar_t = f(t + 1) / f(0)`` for every t before the first beta hits the 0.999 cap."""
    betas = make_betas("cosine", num_steps).numpy()
    t = np.arange(num_steps)
    closed = cosine_f(t + 1, num_steps) / cosine_f(np.zeros(1), num_steps)
    raw_betas = 1.0 - cosine_f(t + 1, num_steps) / cosine_f(t, num_steps)
    unclipped = np.cumprod(raw_betas < 0.999).astype(bool)  # true up to the first clipped step
    assert unclipped.sum() >= num_steps - 2  # only the very end of the chain is capped
    alpha_bar = NoiseSchedule(torch.from_numpy(betas)).alphas_cumprod.numpy()
    np.testing.assert_allclose(alpha_bar[unclipped], closed[unclipped], rtol=1e-9, atol=1e-15)
    assert betas.max() == pytest.approx(0.999)  # the last step is clipped, not 1
    assert (betas <= 0.999).all()


def test_sigmoid_is_monotone_and_between_endpoints() -> None:
    for start, end in [(None, None), (0.0015, 0.0205)]:
        betas = make_betas("sigmoid", 1000, beta_start=start, beta_end=end).numpy()
        lo, hi = start or 1e-4, end or 0.02
        assert (np.diff(betas) > 0).all()
        assert betas.min() >= lo and betas.max() <= hi
        # sigmoid(+-6) is within 0.25 % of the endpoints
        assert betas[0] == pytest.approx(lo + sigmoid(-6.0) * (hi - lo), rel=1e-12)
        assert betas[-1] == pytest.approx(lo + sigmoid(6.0) * (hi - lo), rel=1e-12)
        expected = lo + sigmoid(np.linspace(-6, 6, 1000)) * (hi - lo)
        np.testing.assert_allclose(betas, expected, rtol=1e-12)


@pytest.mark.parametrize("name", [*SCHEDULES, "quadratic"])
def test_betas_are_float64_in_open_unit_interval(name: str) -> None:
    betas = make_betas(name, 300)
    assert betas.dtype == torch.float64
    assert betas.shape == (300,)
    assert ((betas > 0) & (betas < 1)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "exponential"}, "unknown noise schedule"),
        ({"name": "linear", "num_steps": 1}, "num_steps"),
        ({"name": "cosine", "num_steps": 0}, "num_steps"),
        ({"name": "cosine", "beta_start": 1e-4}, "cosine"),
        ({"name": "cosine", "beta_end": 0.02}, "cosine"),
        ({"name": "linear", "beta_end": 1.0}, r"outside \(0, 1\)"),
        ({"name": "sigmoid", "beta_end": 1.5}, r"outside \(0, 1\)"),
        ({"name": "scaled_linear", "beta_end": 1.2}, r"outside \(0, 1\)"),
        ({"name": "linear", "beta_start": 0.0}, r"outside \(0, 1\)"),
        # the default linear schedule scaled by 1000 / 20 ends at 0.02 * 50 = 1
        ({"name": "linear", "num_steps": 20}, r"outside \(0, 1\)"),
    ],
)
def test_make_betas_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_betas(**kwargs)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
def test_negative_beta_start_is_a_config_error(name: str) -> None:
    """A negative ``beta_start`` is a configuration mistake and must surface as ConfigError."""
    with pytest.raises(ConfigError):
        make_betas(name, 1000, beta_start=-0.01, beta_end=0.02)


def test_linear_at_21_steps_is_still_valid() -> None:
    """1000 / 21 * 0.02 = 0.952 < 1: the rescaled linear schedule is accepted."""
    betas = make_betas("linear", 21).numpy()
    assert betas[-1] == pytest.approx(0.02 * 1000 / 21)


# ---------------------------------------------------------------------------------------------
# NoiseSchedule


@pytest.mark.parametrize("name", [*SCHEDULES, "quadratic"])
def test_alpha_bar_is_running_product_of_one_minus_beta(name: str) -> None:
    schedule = NoiseSchedule.named(name, 1000)
    betas = schedule.betas.numpy()
    expected = alpha_bar_by_loop(betas)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), expected, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(schedule.alphas.numpy(), 1.0 - betas, rtol=0, atol=0)
    np.testing.assert_allclose(schedule.alphas_cumprod_prev.numpy(), np.concatenate([[1.0], expected[:-1]]))
    assert schedule.num_steps == 1000
    assert (np.diff(schedule.alphas_cumprod.numpy()) < 0).all()


def test_named_equals_constructor_from_make_betas() -> None:
    a = NoiseSchedule.named("sigmoid", 400, 0.001, 0.03)
    b = NoiseSchedule(make_betas("sigmoid", 400, 0.001, 0.03))
    torch.testing.assert_close(a.alphas_cumprod, b.alphas_cumprod, rtol=0, atol=0)


@pytest.mark.parametrize(
    "betas",
    [torch.full((2, 3), 0.1), torch.tensor([0.1]), torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.1])],
)
def test_schedule_rejects_bad_betas(betas: torch.Tensor) -> None:
    with pytest.raises(ConfigError):
        NoiseSchedule(betas)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar() -> None:
    schedule = NoiseSchedule.named("linear", 1000)
    ab = alpha_bar_by_loop(np.linspace(1e-4, 0.02, 1000))
    t = torch.tensor([0, 1, 10, 300, 999])
    snr = schedule.snr(t)
    assert snr.dtype == torch.float64
    np.testing.assert_allclose(snr.numpy(), ab[t.numpy()] / (1 - ab[t.numpy()]), rtol=1e-9)
    assert (schedule.snr(torch.arange(1000)).diff() < 0).all()  # SNR falls monotonically


def test_q_mean_std_closed_form() -> None:
    """``q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)`` per sample, broadcast over the image."""
    schedule = NoiseSchedule.named("scaled_linear", 1000)
    ab = alpha_bar_by_loop(np.linspace(math.sqrt(1e-4), math.sqrt(0.02), 1000) ** 2)
    t = torch.tensor([0, 499, 999])
    x0 = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    mean, std = schedule.q_mean_std(x0, t)
    assert mean.shape == std.shape == x0.shape
    for i, step in enumerate(t.tolist()):
        torch.testing.assert_close(mean[i], math.sqrt(ab[step]) * x0[i], rtol=1e-6, atol=1e-7)
        # 1 - ab is formed after the float32 cast: at t = 0 (1 - ab = 1e-4) that costs ~1e-4 relative
        torch.testing.assert_close(std[i], torch.full_like(x0[i], math.sqrt(1 - ab[step])), rtol=2e-4, atol=0)


def test_add_noise_is_mean_plus_std_times_noise() -> None:
    schedule = NoiseSchedule.named("cosine", 1000)
    t = torch.tensor([3, 700])
    x0 = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    mean, std = schedule.q_mean_std(x0, t)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), mean + std * noise)


def test_add_noise_empirical_mean_and_variance() -> None:
    """Over many noise draws ``x_t`` has mean ``sqrt(ab) x0`` and variance ``1 - ab`` (5-sigma bounds)."""
    schedule = NoiseSchedule.named("linear", 1000)
    draws = 20_000
    t = torch.tensor([10, 300, 900])
    x0 = torch.tensor([0.7, -1.2, 0.3]).reshape(3, 1).expand(3, draws).contiguous()
    noise = torch.randn(3, draws, generator=torch.Generator().manual_seed(2))
    x_t = schedule.add_noise(x0, noise, t).double()
    ab = alpha_bar_by_loop(np.linspace(1e-4, 0.02, 1000))[t.numpy()]
    for i in range(3):
        var = 1.0 - ab[i]
        mean_se = math.sqrt(var / draws)
        var_se = var * math.sqrt(2.0 / (draws - 1))
        assert x_t[i].mean().item() == pytest.approx(math.sqrt(ab[i]) * x0[i, 0].item(), abs=5 * mean_se)
        assert x_t[i].var().item() == pytest.approx(var, abs=5 * var_se)


def test_gathered_values_follow_data_dtype() -> None:
    schedule = NoiseSchedule.named("linear", 1000)
    t = torch.tensor([5])
    for dtype in (torch.float32, torch.float64):
        x0 = torch.ones(1, 2, dtype=dtype)
        mean, std = schedule.q_mean_std(x0, t)
        assert mean.dtype == std.dtype == dtype
        assert schedule.add_noise(x0, torch.zeros_like(x0), t).dtype == dtype
    x64 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.sqrt(schedule.alphas_cumprod[5].item())
    assert schedule.q_mean_std(x64, t)[0].item() == exact  # no float32 round trip for float64 data


@pytest.mark.parametrize("t", [-1, 1000])
def test_out_of_range_timestep_raises(t: int) -> None:
    schedule = NoiseSchedule.named("linear", 1000)
    with pytest.raises(ValueError, match="timesteps"):
        schedule.add_noise(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([t]))


# ---------------------------------------------------------------------------------------------
# prediction targets


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", ["scaled_linear", "cosine"])
def test_target_and_split_prediction_round_trip(prediction: str, name: str) -> None:
    """The target for ``(x0, eps, t)``, fed back through ``split_prediction``, recovers x0 and eps."""
    schedule = NoiseSchedule.named(name, 1000)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 1, 250, 500, 900])
    x0 = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(prediction, x0, noise, t)
    x0_hat, eps_hat = schedule.split_prediction(prediction, target, x_t, t)
    # split_prediction works in float32; errors are amplified by 1/sqrt(ab) or 1/sqrt(1 - ab) <= ~100
    torch.testing.assert_close(x0_hat.double(), x0, rtol=0, atol=2e-4)
    torch.testing.assert_close(eps_hat.double(), noise, rtol=0, atol=2e-4)


def test_v_target_closed_form() -> None:
    """``v = sqrt(ab) eps - sqrt(1 - ab) x0`` (Salimans & Ho)."""
    schedule = NoiseSchedule.named("linear", 1000)
    ab = alpha_bar_by_loop(np.linspace(1e-4, 0.02, 1000))
    t = torch.tensor([20, 600])
    x0 = torch.tensor([[0.5, -0.25], [1.0, 0.0]])
    noise = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    v = schedule.target("v_prediction", x0, noise, t)
    expected = torch.stack(
        [math.sqrt(ab[s]) * noise[i] - math.sqrt(1 - ab[s]) * x0[i] for i, s in enumerate([20, 600])]
    )
    torch.testing.assert_close(v, expected)
    assert schedule.target("epsilon", x0, noise, t) is noise
    assert schedule.target("sample", x0, noise, t) is x0


def test_v_norm_identity() -> None:
    """``||v||^2 = ab ||eps||^2 + (1 - ab) ||x0||^2`` for orthogonal x0 and eps: 1 for unit vectors."""
    schedule = NoiseSchedule.named("cosine", 1000)
    x0 = torch.tensor([[1.0, 0.0]])
    noise = torch.tensor([[0.0, 1.0]])
    v = schedule.target("v_prediction", x0, noise, torch.tensor([123]))
    assert v.square().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_unknown_prediction_type_raises() -> None:
    schedule = NoiseSchedule.named("linear", 100)
    x = torch.zeros(1, 2)
    with pytest.raises(ConfigError, match="prediction"):
        schedule.target("score", x, x, torch.tensor([0]))
    with pytest.raises(ConfigError, match="prediction"):
        schedule.split_prediction("x0", x, x, torch.tensor([0]))


# ---------------------------------------------------------------------------------------------
# posterior q(x_{t-1} | x_t, x_0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(name: str) -> None:
    """Product of ``q(x_t | x_{t-1}) = N(sqrt(a_t) x_{t-1}, b_t)`` and ``q(x_{t-1} | x0)``."""
    schedule = NoiseSchedule.named(name, 1000)
    betas = schedule.betas.numpy()
    ab = alpha_bar_by_loop(betas)
    t = torch.tensor([1, 50, 400, 998])
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    mean, var = schedule.posterior_mean_variance(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        prior_mean, prior_var = math.sqrt(ab[step - 1]) * x0[i], 1.0 - ab[step - 1]
        alpha, beta = 1.0 - betas[step], betas[step]
        # x_t = sqrt(alpha) x_{t-1} + N(0, beta): likelihood in x_{t-1} has precision alpha / beta
        precision = 1.0 / prior_var + alpha / beta
        post_var = 1.0 / precision
        post_mean = post_var * (prior_mean / prior_var + math.sqrt(alpha) * x_t[i] / beta)
        torch.testing.assert_close(mean[i], post_mean, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(var[i], torch.full_like(x0[i], post_var), rtol=1e-7, atol=0)
        beta_tilde = beta * (1 - ab[step - 1]) / (1 - ab[step])
        assert var[i, 0, 0].item() == pytest.approx(beta_tilde, rel=1e-9)


def test_posterior_at_t0_is_the_clean_image() -> None:
    schedule = NoiseSchedule.named("scaled_linear", 1000)
    x0 = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    x_t = torch.tensor([[5.0, 7.0]], dtype=torch.float64)
    mean, var = schedule.posterior_mean_variance(x0, x_t, torch.tensor([0]))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()
