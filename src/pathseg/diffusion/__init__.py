"""Gaussian diffusion shared by GenSelfDiff (pretraining), CIMD (ambiguous segmentation) and STEDM
(synthesis): schedules, the training objective, samplers, conditioning and guidance.

Depends only on torch (and diffusers' schedulers for the sampler update rules); a denoiser is any
module called as ``model(x, timesteps, cond)``.

Example:
    >>> import torch
    >>> from pathseg.diffusion import DiffusionConfig, DiffusionLoss, Sampler, SamplerConfig
    >>> from pathseg.models import UNet
    >>> net = UNet(out_channels=3, base_channels=8, channel_mults=(1, 2), time_embedding=True)
    >>> loss, logs = DiffusionLoss(DiffusionConfig())(net, torch.rand(2, 3, 16, 16) * 2 - 1)
    >>> config = DiffusionConfig()
    >>> sampler = Sampler(config.noise_schedule(), config.prediction, SamplerConfig(steps=5))
    >>> sampler.sample(net, (1, 3, 16, 16)).shape
    torch.Size([1, 3, 16, 16])
"""

from pathseg.diffusion.conditioning import Condition, Guidance, denoise
from pathseg.diffusion.sampling import Sampler, SamplerConfig
from pathseg.diffusion.schedules import SCHEDULES, NoiseSchedule, make_betas
from pathseg.diffusion.training import DiffusionConfig, DiffusionLoss, loss_weights

__all__ = [
    "SCHEDULES",
    "Condition",
    "DiffusionConfig",
    "DiffusionLoss",
    "Guidance",
    "NoiseSchedule",
    "Sampler",
    "SamplerConfig",
    "denoise",
    "loss_weights",
    "make_betas",
]
