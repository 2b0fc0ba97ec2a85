"""Ancestral DDPM and DDIM sampling, and deterministic DDIM inversion.

Timesteps (both samplers) and the DDPM update come from diffusers' ``DDIMScheduler`` /
``DDPMScheduler`` (well tested, and what users already know), fed with pathseg's own betas
(``trained_betas``), so the schedule of :mod:`pathseg.diffusion.schedules` is the single source of
truth. The DDIM update itself is written here (:func:`ddim_step`): diffusers' ``DDIMScheduler.step``
always moves ``T // steps`` timesteps down, which is not the next listed timestep for
``trailing``/``linspace`` spacing when ``steps`` does not divide ``T`` (and it would then end short of
the clean image); inversion needs the same rule run upwards anyway. Conditioning and guidance go
through :func:`~pathseg.diffusion.conditioning.denoise`.

DDIM uses ``timestep_spacing="trailing"`` by default, so that a 50-step chain starts at the last
training step ``T-1`` (diffusers' "leading" default starts at 980 for T = 1000, which leaves noise
in the result; huggingface/diffusers#2585).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from pathseg.diffusion.conditioning import Condition, Guidance, denoise
from pathseg.diffusion.schedules import NoiseSchedule, Prediction
from pathseg.errors import ConfigError

__all__ = ["Sampler", "SamplerConfig", "ddim_step"]

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""``callback(step_index, t, x_t, x0_hat)`` after every sampler step (for trajectory figures)."""


@dataclass
class SamplerConfig:
    """How to draw samples (a ``sampling:`` config section).

    Args:
        method: ``ddim`` (deterministic for ``eta=0``) or ``ddpm`` (ancestral, posterior variance
            ``beta~_t``; with ``steps < T`` the chain is respaced as in diffusers).
        steps: number of denoising steps; None means ``T`` (the full chain).
        eta: DDIM stochasticity; 0 is deterministic, 1 matches DDPM's variance.
        spacing: diffusers' ``timestep_spacing`` (``trailing``, ``leading`` or ``linspace``).
    """

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    method: Literal["ddim", "ddpm"] = "ddim"
    steps: int | None = 50
    eta: float = 0.0
    spacing: Literal["trailing", "leading", "linspace"] = "trailing"

    def __post_init__(self) -> None:
        if self.method not in ("ddim", "ddpm"):
            raise ConfigError(f"sampling.method must be 'ddim' or 'ddpm', not {self.method!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"sampling.steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ConfigError(f"sampling.eta must be >= 0, got {self.eta}")


def ddim_step(
    x0_hat: Tensor,
    eps_hat: Tensor,
    alpha_bar_t: Tensor,
    alpha_bar_next: Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM move (Song et al. 2021, eq. 12) from ``alpha_bar_t`` to ``alpha_bar_next``.

    ``x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; with ``eta = 0`` it is deterministic
    and also valid upwards (``a' < a``), which is DDIM inversion.
    """
    sigma = 0.0
    if eta > 0:
        sigma = eta * ((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)).sqrt()
    out = alpha_bar_next.sqrt() * x0_hat + (1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt() * eps_hat
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        out = out + sigma * noise
    return out


class Sampler:
    """Draws ``x_0`` from a trained denoiser.

    Args:
        schedule: the training noise schedule.
        prediction: the network's output type (as trained).
        config: method, number of steps, eta, spacing.
        clip_sample: clip predicted ``x0`` to ``[-clip_sample, clip_sample]`` at every step; None
            disables (data not in [-1, 1]).
        learned_variance: the network outputs ``2C`` channels, the mean part and the learned-range
            variance ``v`` (:mod:`pathseg.diffusion.variance`): DDPM steps use the learned variance
            (diffusers' ``learned_range``), DDIM steps use the mean part only.

    Example:
        >>> from pathseg.diffusion import NoiseSchedule
        >>> sampler = Sampler(NoiseSchedule.named("linear"), "epsilon", SamplerConfig(steps=10))
        >>> net = lambda x, t, cond: torch.zeros_like(x)
        >>> sampler.sample(net, (1, 3, 8, 8), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction,
        config: SamplerConfig | None = None,
        clip_sample: float | None = 1.0,
        learned_variance: bool = False,
    ) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler  # ~4 s import: only when sampling

        self.learned_variance = learned_variance
        self.schedule = schedule
        self.prediction = prediction
        self.config = config or SamplerConfig()
        steps = self.config.steps or schedule.num_steps
        if steps > schedule.num_steps:
            raise ConfigError(f"sampling.steps={steps} exceeds the {schedule.num_steps} training steps")
        common = {
            "num_train_timesteps": schedule.num_steps,
            "trained_betas": schedule.betas.numpy(),
            "prediction_type": prediction,
            "clip_sample": clip_sample is not None,
            "clip_sample_range": float(clip_sample or 1.0),
            "timestep_spacing": self.config.spacing,
        }
        self.clip_sample = clip_sample
        if self.config.method == "ddim":
            self.scheduler = DDIMScheduler(**common)  # used for its timestep list only
        else:
            variance = "learned_range" if learned_variance else "fixed_small"
            self.scheduler = DDPMScheduler(**common, variance_type=variance)
        self.scheduler.set_timesteps(steps)

    @property
    def timesteps(self) -> list[int]:
        """The (descending) training timesteps the sampler visits."""
        return [int(t) for t in self.scheduler.timesteps]

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        shape: tuple[int, ...] | None = None,
        condition: Condition | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        device: torch.device | str | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Run the reverse chain from ``noise`` (or fresh Gaussian noise of ``shape``) to ``x_0``.

        Args:
            generator: CPU generator for the initial noise and for stochastic steps, so a seed
                reproduces the samples on any device.
            device: where to run; defaults to the model's device.
        """
        if noise is None and shape is None:
            raise ValueError("give either shape or noise")
        if device is None:
            device = next(model.parameters()).device if isinstance(model, nn.Module) else "cpu"
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        x = noise.to(device=device, dtype=torch.float32)
        timesteps = self.timesteps
        alpha_bar = self.schedule.alphas_cumprod
        for index, t in enumerate(timesteps):
            batch_t = torch.full((x.shape[0],), t, device=device)
            output = denoise(model, x, batch_t, condition, guidance).float()
            if self.config.method == "ddim":
                if self.learned_variance:
                    output = output[:, : output.shape[1] // 2]  # DDIM needs only the mean part
                x0_hat, eps_hat = self.schedule.split_prediction(self.prediction, output, x, batch_t)
                if self.clip_sample is not None:
                    x0_hat = x0_hat.clamp(-self.clip_sample, self.clip_sample)
                # After the last listed step the chain lands on the clean image (alpha_bar = 1).
                next_bar = (
                    alpha_bar[timesteps[index + 1]] if index + 1 < len(timesteps) else alpha_bar.new_ones(())
                )
                step_noise = (
                    torch.randn(x.shape, generator=generator).to(device) if self.config.eta > 0 else None
                )
                x = ddim_step(
                    x0_hat, eps_hat, alpha_bar[t].to(x), next_bar.to(x), self.config.eta, step_noise
                )
            else:
                # diffusers draws the noise on the generator's device and moves it to x's.
                step = self.scheduler.step(output, t, x, generator=generator)
                x, x0_hat = step.prev_sample.to(device), step.pred_original_sample.to(device)
            if callback is not None:
                callback(index, t, x, x0_hat)
        return x

    @torch.no_grad()
    def invert(
        self,
        model: nn.Module,
        x0: Tensor,
        condition: Condition | None = None,
        guidance: Guidance | None = None,
    ) -> Tensor:
        """Deterministic DDIM inversion: the ``x_T`` from which ``sample`` (eta = 0) returns ``x0``.

        Walks the sampler's timesteps upwards, re-noising the current ``x0`` estimate with the
        network's noise estimate at the current step. Exact only in the many-step limit (the noise
        estimate is taken one step early); diffusers' ``DDIMInverseScheduler`` does the same, but
        its timestep pairing does not follow ``timestep_spacing``, so the walk is written out here.
        """
        if self.config.method != "ddim":
            raise ConfigError("inversion needs the ddim sampler")
        alpha_bar = self.schedule.alphas_cumprod
        x = x0.float()
        previous = None  # None: x is the clean image (alpha_bar = 1)
        for t in self.timesteps[::-1]:
            at = previous if previous is not None else t
            batch_t = torch.full((x.shape[0],), at, device=x.device)
            output = denoise(model, x, batch_t, condition, guidance).float()
            x0_hat, eps_hat = self.schedule.split_prediction(self.prediction, output, x, batch_t)
            if previous is None:
                x0_hat, current = x, alpha_bar.new_ones(())
            else:
                current = alpha_bar[previous]
            x = ddim_step(x0_hat, eps_hat, current.to(x), alpha_bar[t].to(x))
            previous = t
        return x
