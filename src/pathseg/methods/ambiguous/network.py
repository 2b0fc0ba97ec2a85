"""CIMD's network and objective: a diffusion denoiser of masks conditioned on the image and on a
latent ``z`` that says which plausible segmentation to draw.

* The denoiser (pathseg's UNet) sees the noisy mask with the image concatenated as channels, the
  timestep, and ``z`` through the condition-vector hook (added to the time embedding). It outputs,
  per mask channel, epsilon and the learned-range variance ``v`` (:mod:`pathseg.diffusion.variance`).
* The ambiguity networks are the Probabilistic U-Net's Gaussian encoders: a posterior
  ``q(z | x, y)`` that sees the image and one annotator's mask, and a prior ``p(z | x)`` that sees
  only the image. Training draws ``z`` from the posterior (so ``z`` can encode *which* annotator's
  style the target has) and pulls the prior towards it with ``lambda * KL(q || p)``; sampling
  draws ``z`` from the prior, one per sample. Both are trained.

Masks enter the diffusion in [-1, 1] (background -1, foreground +1): the noise is zero-mean with unit
variance, so a zero-centred target of the same scale makes every timestep's signal-to-noise ratio
what the schedule says, and the sampler's x0-clipping to [-1, 1] is exact. (The released code
diffuses {0, 1} masks, whose mean 0.5 is an offset the chain has to carry.)

``faithful=True`` reproduces the released code (seeds-spec 4.2, 4.9): prior and posterior are not
optimised (their random weights stay fixed), the prior sees the image's first channel and the
network's epsilon estimate instead of the image, ``z`` never reaches the denoiser (a zero vector),
and the KL, weighted 1e-3, trains the denoiser only through that epsilon estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence

from pathseg.diffusion.conditioning import Condition
from pathseg.diffusion.schedules import NoiseSchedule
from pathseg.diffusion.variance import split_learned_output, vb_loss
from pathseg.models.prob_unet import AxisAlignedGaussianEncoder, sample_latents
from pathseg.models.unet.model import UNet

__all__ = ["CIMDNetwork", "cimd_loss", "mask_to_signal", "sample_masks", "signal_to_mask"]


class CIMDNetwork(nn.Module):
    """Denoiser + prior + posterior. ``forward(x, t, cond)`` is the denoiser, so the diffusion
    samplers call it like any other; :meth:`prior` and :meth:`posterior` give distributions over z.

    Args:
        in_channels: image channels.
        num_classes: 2 (binary masks: one diffused channel) or more (one-hot channels).
        latent_dim: size of z.
        base_channels, channel_mults, num_res_blocks, attention_levels: the denoiser UNet.
        encoder_filters: widths of the prior's and posterior's conv blocks.
        faithful: the released code's prior input (first image channel + epsilon estimate).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        latent_dim: int = 6,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        encoder_filters: Sequence[int] = (32, 64, 128, 192),
        faithful: bool = False,
    ) -> None:
        super().__init__()
        self.image_channels = in_channels
        self.mask_channels = 1 if num_classes == 2 else num_classes
        self.latent_dim = latent_dim
        self.faithful = faithful
        self.denoiser = UNet(
            in_channels=in_channels + self.mask_channels,
            out_channels=2 * self.mask_channels,  # epsilon and the learned-range variance
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            time_embedding=True,
            cond_dim=latent_dim,
        )
        prior_in = 1 + self.mask_channels if faithful else in_channels
        self.prior_net = AxisAlignedGaussianEncoder(prior_in, latent_dim, encoder_filters)
        self.posterior_net = AxisAlignedGaussianEncoder(
            in_channels + self.mask_channels, latent_dim, encoder_filters
        )
        if faithful:  # the release never gives them to the optimizer: their random weights stay
            for parameter in (*self.prior_net.parameters(), *self.posterior_net.parameters()):
                parameter.requires_grad_(False)
        self.config: dict[str, Any] = {
            "name": "cimd",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "latent_dim": latent_dim,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "attention_levels": list(attention_levels),
            "encoder_filters": list(encoder_filters),
            "faithful": faithful,
        }

    def forward(self, x: Tensor, timesteps: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        return self.denoiser(x, timesteps, cond)

    def prior(self, image: Tensor):
        """p(z | x)."""
        return self.prior_net(image)

    def posterior(self, image: Tensor, signal: Tensor):
        """q(z | x, y) from the image and the mask as a diffusion signal in [-1, 1]."""
        return self.posterior_net(torch.cat([image, signal], dim=1))


def mask_to_signal(mask: Tensor, mask_channels: int, ignore_index: int = 255) -> Tensor:
    """Class indices ``(B, H, W)`` -> the diffused signal ``(B, C, H, W)`` in {-1, +1}.

    Ignored pixels become background: the diffusion has no "unknown" value, and an annotator mask
    with ignored pixels should be rare in ambiguous-segmentation data (masks are whole).
    """
    mask = torch.where(mask == ignore_index, torch.zeros_like(mask), mask)
    if mask_channels == 1:
        return (mask > 0).float().unsqueeze(1) * 2 - 1
    one_hot = torch.nn.functional.one_hot(mask.long(), mask_channels).permute(0, 3, 1, 2).float()
    return one_hot * 2 - 1


def signal_to_mask(signal: Tensor) -> Tensor:
    """The sampler's ``x_0`` ``(B, C, H, W)`` -> class indices ``(B, H, W)`` (threshold 0 = 0.5 in
    the {0, 1} scale of the released code, or the argmax of one-hot channels)."""
    if signal.shape[1] == 1:
        return (signal[:, 0] > 0).long()
    return signal.argmax(dim=1)


def cimd_loss(
    model: CIMDNetwork,
    image: Tensor,
    mask: Tensor,
    schedule: NoiseSchedule,
    kl_weight: float = 1.0,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
    prediction: str = "epsilon",
) -> tuple[Tensor, dict[str, float]]:
    """One batch of CIMD's objective: ``MSE(eps, eps_hat) + L_vb + kl_weight * KL(q || p)``.

    ``t`` is uniform, the noise standard normal (from the global RNG unless ``generator``), and
    ``mask`` is one annotator's mask per image (the dataset draws it). ``prediction="sample"``
    makes the network predict the mask ``x0`` instead of the noise (MSE against ``x0``): every
    step then supervises the segmentation directly, which learns from far fewer steps than
    CIMD's epsilon, whose error is small at every ``t`` once the noisy mask is denoised.
    """
    if prediction not in ("epsilon", "sample"):
        raise ValueError(f"prediction must be 'epsilon' or 'sample', not {prediction!r}")
    if model.faithful and prediction != "epsilon":
        raise ValueError("faithful mode reproduces the release, which predicts epsilon")
    x0 = mask_to_signal(mask, model.mask_channels, ignore_index)
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_steps, (batch,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = schedule.add_noise(x0, noise, t)
    condition = Condition(image=image)
    if model.faithful:
        # The release: z is never given to the UNet; the prior sees [image channel 0, eps_hat].
        z = torch.zeros(batch, model.latent_dim, device=x0.device)
        output = model(condition.model_input(x_t), t, z)
        eps_hat, _ = split_learned_output(output.float())
        posterior = model.posterior(image, x0)
        prior = model.prior_net(torch.cat([image[:, :1], eps_hat], dim=1))
    else:
        posterior = model.posterior(image, x0)
        z = posterior.rsample()
        output = model(condition.model_input(x_t), t, z)
        eps_hat, _ = split_learned_output(output.float())  # x0_hat with prediction="sample"
        prior = model.prior(image)
    target = noise if prediction == "epsilon" else x0
    mse = (eps_hat - target).square().mean(dim=(1, 2, 3))
    vb = vb_loss(schedule, prediction, output.float(), x0, x_t, t)
    kl = kl_divergence(posterior, prior)
    loss = (mse + vb + kl_weight * kl).mean()
    logs = {"mse": mse.mean(), "vb": vb.mean(), "kl": kl.mean()}
    return loss, {name: float(value.detach()) for name, value in logs.items()}


@torch.no_grad()
def sample_masks(
    model: CIMDNetwork, image: Tensor, n: int, sampler, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` masks per image: ``(n, B, H, W)`` class indices, and the soft mean ``(B, H, W)`` (the
    share of samples calling a pixel foreground; for one-hot masks, of the argmax being non-zero).

    Each sample draws its own ``z`` from the prior (zeros in faithful mode, where diversity comes
    from the reverse chain alone) and its own starting noise, all from ``generator``, so a seed
    reproduces the set. ``H`` and ``W`` must suit the denoiser (multiples of its downsampling).
    """
    batch = image.shape[0]
    if model.faithful:
        z = torch.zeros(n * batch, model.latent_dim, device=image.device)
    else:
        z = sample_latents(model.prior(image), n, generator).reshape(n * batch, model.latent_dim)
    images = image.repeat(n, 1, 1, 1)  # sample-major: row i * batch + b is sample i of image b
    shape = (n * batch, model.mask_channels, *image.shape[-2:])
    x0 = sampler.sample(model, shape, Condition(image=images, vector=z), generator=generator)
    masks = signal_to_mask(x0).reshape(n, batch, *image.shape[-2:])
    return masks, (masks > 0).float().mean(dim=0)
