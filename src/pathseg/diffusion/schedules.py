"""Noise schedules and the closed-form quantities of the Gaussian forward process.

Notation (Ho et al. 2020): ``beta_t`` is the noise added at step ``t`` (0-based here,
``t = 0 .. T-1``), ``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s``, and

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),   SNR(t) = alpha_bar_t / (1 - alpha_bar_t).

Everything is computed in float64 and cast to the data's dtype only when gathered, so long
schedules (T = 1000) keep their precision near ``alpha_bar -> 0``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from pathseg.errors import ConfigError

__all__ = ["SCHEDULES", "NoiseSchedule", "Prediction", "make_betas"]

Prediction = Literal["epsilon", "sample", "v_prediction"]
PREDICTIONS = ("epsilon", "sample", "v_prediction")

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
# GenSelfDiff calls the squared-linspace schedule "quadratic"; LDM/STEDM call it "linear".
_ALIASES = {"quadratic": "scaled_linear"}


def make_betas(
    name: str, num_steps: int = 1000, beta_start: float | None = None, beta_end: float | None = None
) -> Tensor:
    """The ``beta_t`` of a named schedule, float64 of shape ``(num_steps,)``.

    * ``linear`` (DDPM / guided-diffusion): evenly spaced from 1e-4 to 0.02, both scaled by
      ``1000 / num_steps`` so that shorter chains still end near pure noise.
    * ``scaled_linear`` (alias ``quadratic``; LDM, GenSelfDiff): ``linspace(sqrt(b0), sqrt(b1))**2``,
      defaults 1e-4 and 0.02 (GenSelfDiff); STEDM uses 0.0015 and 0.0205.
    * ``cosine`` (Nichol & Dhariwal 2021): ``alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)``
      with ``s = 0.008``, betas clipped at 0.999; ``beta_start``/``beta_end`` do not apply.
    * ``sigmoid``: ``sigmoid(linspace(-6, 6))`` rescaled to ``[beta_start, beta_end]``.

    Raises:
        ConfigError: unknown name, non-positive length, or betas outside (0, 1).
    """
    key = _ALIASES.get(name, name)
    if key not in SCHEDULES:
        raise ConfigError(f"unknown noise schedule {name!r}; known: {', '.join(SCHEDULES + tuple(_ALIASES))}")
    if num_steps < 2:
        raise ConfigError(f"diffusion num_steps must be >= 2, got {num_steps}")
    if key == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ConfigError("the cosine schedule has no beta_start/beta_end; leave them unset")
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    else:
        scale = 1000.0 / num_steps if key == "linear" else 1.0
        start = beta_start if beta_start is not None else 1e-4 * scale
        end = beta_end if beta_end is not None else 0.02 * scale
        if min(start, end) < 0:
            raise ConfigError(f"noise schedule {name!r}: beta_start and beta_end must be positive")
        if key == "linear":
            betas = torch.linspace(start, end, num_steps, dtype=torch.float64)
        elif key == "scaled_linear":
            betas = torch.linspace(math.sqrt(start), math.sqrt(end), num_steps, dtype=torch.float64) ** 2
        else:
            betas = (
                torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64)) * (end - start) + start
            )
    if not (betas > 0).all() or not (betas < 1).all():
        raise ConfigError(
            f"noise schedule {name!r} with beta_start={beta_start}, beta_end={beta_end} gives betas "
            "outside (0, 1)"
        )
    return betas


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ConfigError(f"unknown prediction type {prediction!r}; known: {', '.join(PREDICTIONS)}")


class NoiseSchedule:
    """Forward process ``q`` of a discrete Gaussian diffusion with the given betas.

    Args:
        betas: ``(T,)`` values in (0, 1), e.g. from :func:`make_betas`.

    Example:
        >>> schedule = NoiseSchedule.named("cosine", 1000)
        >>> x0 = torch.zeros(2, 3, 8, 8)
        >>> x_t = schedule.add_noise(x0, torch.randn_like(x0), torch.tensor([0, 999]))
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ConfigError(f"betas must be a 1-D sequence of length >= 2, got shape {tuple(betas.shape)}")
        if not ((betas > 0) & (betas < 1)).all():
            raise ConfigError("betas must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Precomputed in float64: 1 - alpha_bar in float32 loses most digits at small t.
        self.signal_scale = self.alphas_cumprod.sqrt()
        self.noise_scale = (1.0 - self.alphas_cumprod).sqrt()

    @classmethod
    def named(
        cls, name: str, num_steps: int = 1000, beta_start: float | None = None, beta_end: float | None = None
    ) -> NoiseSchedule:
        """Schedule from :func:`make_betas`."""
        return cls(make_betas(name, num_steps, beta_start, beta_end))

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``values[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against ``like``."""
        t = torch.as_tensor(t, device=values.device).long()
        if t.min() < 0 or t.max() >= self.num_steps:
            raise ValueError(f"timesteps must be in [0, {self.num_steps - 1}], got {t.min()}..{t.max()}")
        out = values[t].to(
            device=like.device, dtype=torch.float32 if like.dtype != torch.float64 else like.dtype
        )
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` (float64, shape of ``t``)."""
        alpha_bar = self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return alpha_bar / (1 - alpha_bar)

    def q_mean_std(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``q(x_t | x_0)``."""
        a, s = self._at(self.signal_scale, t, x0), self._at(self.noise_scale, t, x0)
        return a * x0, s.expand_as(x0)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` with the given standard-normal ``noise``."""
        a, s = self._at(self.signal_scale, t, x0), self._at(self.noise_scale, t, x0)
        return (a * x0 + s * noise).to(x0.dtype)

    def target(self, prediction: Prediction, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What a network with this ``prediction`` type must output for ``x_t = add_noise(x0, noise, t)``.

        ``v_prediction`` is Salimans & Ho (2022): ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0``.
        """
        _check_prediction(prediction)
        if prediction == "epsilon":
            return noise
        if prediction == "sample":
            return x0
        a, s = self._at(self.signal_scale, t, x0), self._at(self.noise_scale, t, x0)
        return a * noise - s * x0

    def split_prediction(
        self, prediction: Prediction, output: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(x0_hat, eps_hat)`` implied by a network output of the given type at ``x_t``."""
        _check_prediction(prediction)
        a, s = self._at(self.signal_scale, t, x_t), self._at(self.noise_scale, t, x_t)
        output, x_t = output.float(), x_t.float()
        if prediction == "epsilon":
            return (x_t - s * output) / a, output
        if prediction == "sample":
            return output, (x_t - a * output) / s
        x0 = a * x_t - s * output
        return x0, s * x_t + a * output

    def posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (the variance is ``beta~_t``; 0 at ``t = 0``)."""
        beta = self._at(self.betas, t, x_t)
        alpha = self._at(self.alphas, t, x_t)
        alpha_bar = self._at(self.alphas_cumprod, t, x_t)
        alpha_bar_prev = self._at(self.alphas_cumprod_prev, t, x_t)
        mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 + (
            alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
        ) * x_t
        variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
        return mean, variance.expand_as(x_t)
