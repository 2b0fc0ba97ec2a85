"""Ancestral DDPM and DDIM sampling, and deterministic DDIM inversion.

The update rules are diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (well tested, and what users
already know); pathseg hands them its own betas (``trained_betas``), so the schedule defined in
:mod:`pathseg.diffusion.schedules` is the single source of truth for training and sampling.
The loop around them, conditioning and guidance are ours (:func:`~pathseg.diffusion.conditioning.denoise`).

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

__all__ = ["Sampler", "SamplerConfig"]

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


class Sampler:
    """Draws ``x_0`` from a trained denoiser.

    Args:
        schedule: the training noise schedule.
        prediction: the network's output type (as trained).
        config: method, number of steps, eta, spacing.
        clip_sample: clip predicted ``x0`` to ``[-clip_sample, clip_sample]`` at every step; None
            disables (data not in [-1, 1]).

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
    ) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler  # ~4 s import: only when sampling

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
        if self.config.method == "ddim":
            # set_alpha_to_one: the last step lands on the clean image (alpha_bar = 1), not on t = 0.
            self.scheduler = DDIMScheduler(**common, set_alpha_to_one=True)
        else:
            self.scheduler = DDPMScheduler(**common, variance_type="fixed_small")
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
        for index, t in enumerate(self.timesteps):
            output = denoise(
                model, x, torch.full((x.shape[0],), t, device=device), condition, guidance
            ).float()
            if self.config.method == "ddim":
                variance_noise = None
                if self.config.eta > 0:
                    variance_noise = torch.randn(x.shape, generator=generator).to(device)
                step = self.scheduler.step(output, t, x, eta=self.config.eta, variance_noise=variance_noise)
            else:
                # diffusers draws the noise on the generator's device and moves it to x's.
                step = self.scheduler.step(output, t, x, generator=generator)
            x = step.prev_sample.to(device)
            if callback is not None:
                callback(index, t, x, step.pred_original_sample.to(device))
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
        ascending = self.timesteps[::-1]
        previous = None  # None: x is the clean image (alpha_bar = 1)
        for t in ascending:
            at = previous if previous is not None else t
            output = denoise(model, x, torch.full((x.shape[0],), at, device=x.device), condition, guidance)
            x0_hat, eps = self.schedule.split_prediction(
                self.prediction, output.float(), x, torch.full((x.shape[0],), at)
            )
            if previous is None:
                x0_hat = x
            a = alpha_bar[t].to(x)
            x = a.sqrt() * x0_hat + (1 - a).sqrt() * eps
            previous = t
        return x
