"""The denoising training objective: draw ``t`` and noise, predict the target, weight by timestep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from pathseg.diffusion.conditioning import Condition, Guidance, denoise
from pathseg.diffusion.schedules import PREDICTIONS, NoiseSchedule, Prediction
from pathseg.errors import ConfigError

__all__ = ["DiffusionConfig", "DiffusionLoss", "loss_weights"]

Weighting = Literal["uniform", "p2", "min_snr"]


@dataclass
class DiffusionConfig:
    """Schedule, parameterisation and loss of a diffusion model (a ``diffusion:`` config section).

    Defaults follow GenSelfDiff-HIS: T = 1000, the squared-linspace ("quadratic") schedule from
    1e-4 to 0.02, epsilon prediction, MSE with P2 weighting ``1 / (k + SNR)^gamma``, k = gamma = 1.

    Args:
        schedule: ``linear``, ``scaled_linear`` (= ``quadratic``), ``cosine`` or ``sigmoid``.
        num_steps: T, the length of the forward chain.
        beta_start, beta_end: override the schedule's default end points.
        prediction: what the network outputs: ``epsilon`` (noise), ``sample`` (x0) or
            ``v_prediction``.
        loss: ``mse`` or ``l1`` (STEDM) between output and target.
        weighting: ``uniform``; ``p2`` (Choi et al. 2022) ``1 / (p2_k + SNR)^p2_gamma``; ``min_snr``
            (Hang et al. 2023), which caps the effective x0-weight at ``min_snr_gamma``.
        condition_dropout: training-time classifier-free-guidance drop rate of the condition vector.
        clip_sample: x0 predictions are clipped to ``[-clip_sample, clip_sample]`` while sampling
            (data scaled to [-1, 1]); None disables.
    """

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    schedule: str = "scaled_linear"
    num_steps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    prediction: Prediction = "epsilon"
    loss: Literal["mse", "l1"] = "mse"
    weighting: Weighting = "p2"
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    min_snr_gamma: float = 5.0
    condition_dropout: float = 0.0
    clip_sample: float | None = 1.0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"diffusion.prediction must be one of {PREDICTIONS}, not {self.prediction!r}")
        if self.loss not in ("mse", "l1"):
            raise ConfigError(f"diffusion.loss must be 'mse' or 'l1', not {self.loss!r}")
        if self.weighting not in ("uniform", "p2", "min_snr"):
            raise ConfigError(f"diffusion.weighting must be uniform, p2 or min_snr, not {self.weighting!r}")
        if self.p2_k < 0:
            raise ConfigError(f"diffusion.p2_k must be >= 0, got {self.p2_k}")
        if self.min_snr_gamma <= 0:
            raise ConfigError(f"diffusion.min_snr_gamma must be > 0, got {self.min_snr_gamma}")

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.named(self.schedule, self.num_steps, self.beta_start, self.beta_end)


def loss_weights(config: DiffusionConfig, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Per-sample loss weight ``lambda_t`` (float32, shape of ``t``).

    Min-SNR is defined on the x0 loss; for an epsilon loss it becomes ``min(SNR, g) / SNR`` and for
    a v loss ``min(SNR, g) / (SNR + 1)``, since ``||eps - eps^||^2 = SNR ||x0 - x0^||^2`` and
    ``||v - v^||^2 = (SNR + 1) ||x0 - x0^||^2``.
    """
    if config.weighting == "uniform":
        return torch.ones(t.shape, dtype=torch.float32)
    snr = schedule.snr(t)
    if config.weighting == "p2":
        weight = 1.0 / (config.p2_k + snr) ** config.p2_gamma
    else:
        capped = snr.clamp(max=config.min_snr_gamma)
        weight = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}[
            config.prediction
        ]
    return weight.float()


class DiffusionLoss:
    """``loss(model, x0, condition) -> (scalar, logs)`` for one batch of clean data ``x0``.

    Per sample: ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; the
    error between output and target is averaged over pixels, weighted by ``lambda_t`` and averaged
    over the batch. (GenSelfDiff sums over the batch instead, which only rescales the learning rate.)

    Randomness comes from the global torch RNG unless a generator is given, so the engine's
    checkpoint restores it on resume.
    """

    def __init__(self, config: DiffusionConfig, guidance: Guidance | None = None) -> None:
        self.config = config
        self.schedule = config.noise_schedule()
        if guidance is None and config.condition_dropout > 0:
            guidance = Guidance(drop_probability=config.condition_dropout)
        self.guidance = guidance

    def __call__(
        self,
        model: nn.Module,
        x0: Tensor,
        condition: Condition | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        batch = x0.shape[0]
        t = torch.randint(0, self.schedule.num_steps, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        t = t.to(x0.device)
        x_t = self.schedule.add_noise(x0.float(), noise, t)
        if condition is not None and self.guidance is not None:
            condition = self.guidance.drop_for_training(condition, generator)
        output = denoise(model, x_t, t, condition)
        target = self.schedule.target(self.config.prediction, x0.float(), noise, t)
        diff = output.float() - target
        error = (diff.square() if self.config.loss == "mse" else diff.abs()).mean(
            dim=tuple(range(1, x0.ndim))
        )
        weights = loss_weights(self.config, self.schedule, t.cpu()).to(x0.device)
        loss = (weights * error).mean()
        return loss, {"unweighted_loss": float(error.mean().detach())}
