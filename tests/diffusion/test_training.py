"""The training objective: loss weights against closed forms, and DiffusionLoss with oracle models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathseg.diffusion import Condition, DiffusionConfig, DiffusionLoss, NoiseSchedule, loss_weights
from pathseg.errors import ConfigError
from pathseg.models import UNet

# The default schedule (scaled_linear 1e-4..0.02, T = 1000), computed independently of pathseg.
BETAS = np.linspace(math.sqrt(1e-4), math.sqrt(0.02), 1000) ** 2
ALPHA_BAR = np.cumprod(1.0 - BETAS)
SNR = ALPHA_BAR / (1.0 - ALPHA_BAR)
# SNR falls through 5 between these two timesteps (asserted in the test that uses them).
CROSS = int(np.nonzero(SNR < 5)[0][0])
T_AROUND_CROSSING = torch.tensor([0, 20, CROSS - 30, CROSS - 1, CROSS, CROSS + 30, 600, 999])


def tiny_unet(in_channels: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(
        in_channels=in_channels,
        out_channels=3,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        time_embedding=True,
    )


class Recorder:
    """A denoiser that returns ``fn(x_t, t)`` and keeps what it was called with."""

    def __init__(self, fn=None) -> None:
        self.fn = fn or (lambda x, t: torch.zeros_like(x))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        return self.fn(x, t)


def oracle(prediction: str, x0_value: float):
    """Exact target for data that is the constant ``x0_value``: eps is recovered from ``x_t``."""

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = torch.from_numpy(ALPHA_BAR)[t.long()].view(-1, *([1] * (x_t.ndim - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = torch.full_like(x_t, x0_value, dtype=torch.float64)
        eps = (x_t.double() - a * x0) / s
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction]
        return out.float()

    return fn


# ---------------------------------------------------------------------------------------------
# loss_weights


def test_crossing_timesteps_straddle_snr_5() -> None:
    assert SNR[CROSS - 1] > 5 > SNR[CROSS]
    assert 0 < CROSS < 999


def test_uniform_weights_are_one() -> None:
    config = DiffusionConfig(weighting="uniform")
    w = loss_weights(config, config.noise_schedule(), T_AROUND_CROSSING)
    assert w.dtype == torch.float32
    assert w.shape == T_AROUND_CROSSING.shape
    assert (w == 1).all()


@pytest.mark.parametrize(("k", "gamma"), [(1.0, 1.0), (2.0, 0.5), (0.0, 1.0)])
def test_p2_weights_closed_form(k: float, gamma: float) -> None:
    """P2: ``(k + SNR)^-gamma``; (1, 1) is ``1 / (1 + SNR) = 1 - alpha_bar``."""
    config = DiffusionConfig(weighting="p2", p2_k=k, p2_gamma=gamma)
    w = loss_weights(config, config.noise_schedule(), T_AROUND_CROSSING).double().numpy()
    snr = SNR[T_AROUND_CROSSING.numpy()]
    np.testing.assert_allclose(w, (k + snr) ** -gamma, rtol=1e-6)
    if (k, gamma) == (1.0, 1.0):
        np.testing.assert_allclose(w, 1 - ALPHA_BAR[T_AROUND_CROSSING.numpy()], rtol=1e-6)


@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_weights_per_prediction(gamma: float) -> None:
    """Min-SNR caps the x0 weight at gamma; translated to eps and v losses by 1/SNR and 1/(SNR+1)."""
    snr = SNR[T_AROUND_CROSSING.numpy()]
    capped = np.minimum(snr, gamma)
    expected = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}
    for prediction, values in expected.items():
        config = DiffusionConfig(weighting="min_snr", prediction=prediction, min_snr_gamma=gamma)
        w = loss_weights(config, config.noise_schedule(), T_AROUND_CROSSING).double().numpy()
        np.testing.assert_allclose(w, values, rtol=1e-6, err_msg=prediction)


def test_min_snr_epsilon_is_one_below_crossing_and_gamma_over_snr_above() -> None:
    config = DiffusionConfig(weighting="min_snr", prediction="epsilon")
    w = loss_weights(config, config.noise_schedule(), torch.tensor([CROSS - 1, CROSS, 999])).double()
    assert w[0].item() == pytest.approx(5 / SNR[CROSS - 1], rel=1e-6)
    assert w[0].item() < 1
    assert w[1].item() == pytest.approx(1.0, rel=1e-6)
    assert w[2].item() == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# DiffusionConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prediction": "x0"}, "prediction"),
        ({"loss": "huber"}, "loss"),
        ({"weighting": "snr"}, "weighting"),
        ({"p2_k": -1.0}, "p2_k"),
        ({"min_snr_gamma": 0.0}, "min_snr_gamma"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DiffusionConfig(**kwargs)


def test_config_defaults_follow_genselfdiff() -> None:
    config = DiffusionConfig()
    schedule = config.noise_schedule()
    assert isinstance(schedule, NoiseSchedule)
    np.testing.assert_allclose(schedule.betas.numpy(), BETAS, rtol=1e-12)
    assert (config.prediction, config.loss, config.weighting) == ("epsilon", "mse", "p2")
    assert (config.p2_k, config.p2_gamma) == (1.0, 1.0)


def test_config_bad_schedule_fails_when_built() -> None:
    with pytest.raises(ConfigError, match="unknown noise schedule"):
        DiffusionConfig(schedule="exponential").noise_schedule()


# ---------------------------------------------------------------------------------------------
# DiffusionLoss


def test_loss_on_tiny_unet_is_finite_scalar_with_gradient() -> None:
    net = tiny_unet()
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, logs = DiffusionLoss(DiffusionConfig())(net, x0, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert loss.requires_grad
    assert math.isfinite(logs["unweighted_loss"]) and logs["unweighted_loss"] > 0
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_loss_with_generator_is_reproducible() -> None:
    net = tiny_unet()
    x0 = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    objective = DiffusionLoss(DiffusionConfig())
    with torch.no_grad():
        a, _ = objective(net, x0, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(123)  # the global RNG must not matter when a generator is given
        b, _ = objective(net, x0, generator=torch.Generator().manual_seed(5))
        c, _ = objective(net, x0, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_loss_without_generator_uses_global_rng() -> None:
    model = Recorder()
    objective = DiffusionLoss(DiffusionConfig(weighting="uniform"))
    x0 = torch.zeros(4, 1, 4, 4)
    torch.manual_seed(9)
    a, _ = objective(model, x0)
    torch.manual_seed(9)
    b, _ = objective(model, x0)
    assert a.item() == b.item()
    torch.testing.assert_close(model.calls[0][0], model.calls[1][0], rtol=0, atol=0)


def test_timesteps_are_uniform_over_the_chain() -> None:
    """``t ~ U{0..T-1}``: every step of a 10-step chain drawn about batch/10 times (5-sigma)."""
    model = Recorder()
    objective = DiffusionLoss(DiffusionConfig(num_steps=10, weighting="uniform"))
    objective(model, torch.zeros(5000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    t = model.calls[0][1]
    assert t.shape == (5000,)
    counts = torch.bincount(t, minlength=10)
    assert len(counts) == 10  # nothing outside 0..9
    sd = math.sqrt(5000 * 0.1 * 0.9)
    assert (counts - 500).abs().max().item() < 5 * sd


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("weighting", ["uniform", "p2", "min_snr"])
def test_oracle_model_has_zero_loss(prediction: str, weighting: str) -> None:
    """A model that outputs the exact target (known here because x0 is a known constant) costs ~0."""
    x0 = torch.full((16, 2, 4, 4), 0.5)
    config = DiffusionConfig(prediction=prediction, weighting=weighting)
    loss, logs = DiffusionLoss(config)(
        Recorder(oracle(prediction, 0.5)), x0, generator=torch.Generator().manual_seed(0)
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    assert logs["unweighted_loss"] == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("weighting", ["uniform", "p2", "min_snr"])
def test_zero_model_loss_is_weighted_noise_energy(weighting: str) -> None:
    """For epsilon-MSE a zero output costs ``mean_b w(t_b) * mean(eps_b^2)``; that is ~E[w_t]."""
    model = Recorder()
    batch = 512
    config = DiffusionConfig(weighting=weighting)
    loss, logs = DiffusionLoss(config)(
        model, torch.zeros(batch, 1, 4, 4), generator=torch.Generator().manual_seed(1)
    )
    x_t, t, _ = model.calls[0]
    ab = torch.from_numpy(ALPHA_BAR)[t].view(-1, 1, 1, 1)
    noise = x_t.double() / (1 - ab).sqrt()  # x0 = 0, so x_t = sqrt(1 - ab) eps
    snr = torch.from_numpy(SNR)[t]
    w = {"uniform": torch.ones_like(snr), "p2": 1 / (1 + snr), "min_snr": snr.clamp(max=5) / snr}[weighting]
    per_sample = noise.square().mean(dim=(1, 2, 3))
    assert loss.item() == pytest.approx((w * per_sample).mean().item(), rel=1e-5)
    assert logs["unweighted_loss"] == pytest.approx(per_sample.mean().item(), rel=1e-5)
    # and statistically: E[eps^2] = 1, so the loss is close to E_t[w_t] over the uniform t
    expected_w = {
        "uniform": 1.0,
        "p2": float(np.mean(1 / (1 + SNR))),
        "min_snr": float(np.mean(np.minimum(SNR, 5) / SNR)),
    }
    assert loss.item() == pytest.approx(expected_w[weighting], rel=0.15)


def test_l1_and_mse_of_a_constant_offset() -> None:
    """Output = target + 0.5 everywhere: MSE is 0.25 and L1 is 0.5 (uniform weighting)."""
    fn = oracle("epsilon", -0.25)
    model = Recorder(lambda x, t: fn(x, t) + 0.5)
    x0 = torch.full((8, 1, 4, 4), -0.25)
    for kind, expected in (("mse", 0.25), ("l1", 0.5)):
        config = DiffusionConfig(loss=kind, weighting="uniform")
        loss, _ = DiffusionLoss(config)(model, x0, generator=torch.Generator().manual_seed(2))
        assert loss.item() == pytest.approx(expected, rel=1e-4), kind


def test_l1_of_zero_model_is_mean_absolute_noise() -> None:
    """L1 against eps: ``mean |eps|``, about sqrt(2 / pi); MSE on the same draw is ``mean eps^2``."""
    model = Recorder()
    x0 = torch.zeros(256, 1, 4, 4)
    l1, _ = DiffusionLoss(DiffusionConfig(loss="l1", weighting="uniform"))(
        model, x0, generator=torch.Generator().manual_seed(3)
    )
    mse, _ = DiffusionLoss(DiffusionConfig(loss="mse", weighting="uniform"))(
        model, x0, generator=torch.Generator().manual_seed(3)
    )
    x_t, t, _ = model.calls[0]
    noise = x_t.double() / (1 - torch.from_numpy(ALPHA_BAR)[t].view(-1, 1, 1, 1)).sqrt()
    assert l1.item() == pytest.approx(noise.abs().mean().item(), rel=1e-5)
    assert mse.item() == pytest.approx(noise.square().mean().item(), rel=1e-5)
    assert l1.item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.05)
    assert mse.item() == pytest.approx(1.0, rel=0.1)


def test_condition_reaches_model_and_dropout_nulls_about_the_configured_fraction() -> None:
    model = Recorder(lambda x, t: torch.zeros_like(x[:, :1]))
    batch = 2000
    condition = Condition(image=torch.full((batch, 2, 2, 2), 3.0), vector=torch.ones(batch, 4))
    objective = DiffusionLoss(DiffusionConfig(condition_dropout=0.3))
    objective(model, torch.zeros(batch, 1, 2, 2), condition, generator=torch.Generator().manual_seed(4))
    x, _, cond = model.calls[0]
    assert x.shape == (batch, 3, 2, 2)
    assert (x[:, 1:] == 3.0).all()  # the default guidance drops the vector only
    dropped = (cond == 0).all(dim=1)
    kept = (cond == 1).all(dim=1)
    assert bool((dropped | kept).all())
    sd = math.sqrt(batch * 0.3 * 0.7)
    assert abs(dropped.sum().item() - 0.3 * batch) < 5 * sd


def test_no_dropout_passes_condition_unchanged() -> None:
    model = Recorder(lambda x, t: torch.zeros_like(x[:, :1]))
    vector = torch.arange(12.0).reshape(3, 4)
    DiffusionLoss(DiffusionConfig())(model, torch.zeros(3, 1, 2, 2), Condition(vector=vector))
    torch.testing.assert_close(model.calls[0][2], vector, rtol=0, atol=0)


def test_unet_with_condition_image_channels() -> None:
    """A UNet with in_channels = 3 + 1 trains on x_t concatenated with a 1-channel condition image."""
    net = tiny_unet(in_channels=4)
    x0 = torch.zeros(2, 3, 16, 16)
    condition = Condition(image=torch.ones(2, 1, 16, 16))
    loss, _ = DiffusionLoss(DiffusionConfig())(net, x0, condition, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
