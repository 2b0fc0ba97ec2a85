"""Learned-range reverse variance and its variational-bound loss (Nichol & Dhariwal, 2021).

A denoiser with ``learn_sigma`` outputs, per data channel, the mean parameterisation (epsilon, x0 or
v) and a value ``v`` in [-1, 1] that interpolates the reverse variance in log space between the
two natural choices::

    log Sigma_t = frac * log beta_t + (1 - frac) * log beta~_t,     frac = (v + 1) / 2

The variance is trained by the variational-bound term ``L_vb``: the KL between the true posterior
``q(x_{t-1} | x_t, x_0)`` and ``p(x_{t-1} | x_t)``, and at ``t = 0`` the negative log-likelihood of
``x_0`` under a Gaussian discretised into 256 bins on [-1, 1]. The mean is detached inside
``L_vb`` so that only the variance learns from it (the mean keeps its simple MSE), as in
improved DDPM and CIMD. Values are in bits per dimension, averaged over the non-batch dimensions.

``beta~_0`` is 0, so its log is replaced by ``log beta~_1`` (improved DDPM's "clipped" posterior
log-variance).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pathseg.diffusion.schedules import NoiseSchedule, Prediction

__all__ = [
    "discretized_gaussian_log_likelihood",
    "learned_log_variance",
    "normal_kl",
    "posterior_log_variance",
    "reverse_mean_log_variance",
    "split_learned_output",
    "vb_loss",
]


def split_learned_output(output: Tensor) -> tuple[Tensor, Tensor]:
    """A ``learn_sigma`` network output ``(B, 2C, ...)`` -> (mean output ``(B, C, ...)``, ``v``)."""
    if output.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even channel count, got {output.shape[1]}")
    return output.chunk(2, dim=1)


def posterior_log_variance(schedule: NoiseSchedule) -> Tensor:
    """``log beta~_t`` for every t (float64), with ``t = 0`` taking the value of ``t = 1``."""
    variance = schedule.betas * (1 - schedule.alphas_cumprod_prev) / (1 - schedule.alphas_cumprod)
    variance = torch.cat([variance[1:2], variance[1:]])
    return variance.log()


def learned_log_variance(schedule: NoiseSchedule, v: Tensor, t: Tensor) -> Tensor:
    """``log Sigma_t`` from the network's ``v`` (any real value; clamped to [-1, 1])."""
    frac = (v.float().clamp(-1, 1) + 1) / 2
    log_max = schedule._at(schedule.betas.log(), t, v)
    log_min = schedule._at(posterior_log_variance(schedule), t, v)
    return frac * log_max + (1 - frac) * log_min


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) in nats."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1
    )


def _standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256
) -> Tensor:
    """Elementwise log-probability (nats) of data ``x`` in [-1, 1] on a grid of ``bins`` levels under
    ``N(mean, exp(log_scale)^2)`` integrated over each level's bin; the two end bins extend to
    -inf and +inf so the probabilities sum to one."""
    half_bin = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    centred = x - mean
    cdf_plus = _standard_normal_cdf(inv_std * (centred + half_bin))
    cdf_minus = _standard_normal_cdf(inv_std * (centred - half_bin))
    tiny = 1e-12
    log_cdf_plus = cdf_plus.clamp(min=tiny).log()
    log_one_minus_cdf_minus = (1.0 - cdf_minus).clamp(min=tiny).log()
    log_delta = (cdf_plus - cdf_minus).clamp(min=tiny).log()
    return torch.where(
        x < -1 + 1e-3, log_cdf_plus, torch.where(x > 1 - 1e-3, log_one_minus_cdf_minus, log_delta)
    )


def reverse_mean_log_variance(
    schedule: NoiseSchedule,
    prediction: Prediction,
    mean_output: Tensor,
    v: Tensor,
    x_t: Tensor,
    t: Tensor,
    clip_sample: float | None = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and log-variance of ``p(x_{t-1} | x_t)``, and the implied ``x0`` (clipped when asked)."""
    x0, _ = schedule.split_prediction(prediction, mean_output, x_t, t)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    mean, _ = schedule.posterior_mean_variance(x0, x_t.float(), t)
    return mean, learned_log_variance(schedule, v, t), x0


def vb_loss(
    schedule: NoiseSchedule,
    prediction: Prediction,
    output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
) -> Tensor:
    """``L_vb`` per sample, bits per dimension: the KL to the true posterior for ``t > 0``, the
    decoder NLL for ``t = 0``. The mean part of ``output`` is detached (only ``v`` learns here)."""
    mean_output, v = split_learned_output(output)
    mean, log_variance, _ = reverse_mean_log_variance(
        schedule, prediction, mean_output.detach(), v, x_t, t, clip_sample=None
    )
    true_mean, _ = schedule.posterior_mean_variance(x0.float(), x_t.float(), t)
    true_log_variance = schedule._at(posterior_log_variance(schedule), t, x_t)
    dims = tuple(range(1, x0.ndim))
    kl = normal_kl(true_mean, true_log_variance, mean, log_variance).mean(dim=dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0.float(), mean, 0.5 * log_variance).mean(dim=dims)
    return torch.where(t == 0, nll / math.log(2.0), kl)
