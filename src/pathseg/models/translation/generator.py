"""Mask -> H&E generator in the spirit of StyleGAN2 with co-modulation.

UNITPathSSL's G_AB is a StyleGAN2-ADA generator whose style vector is the mapping network's ``w``
concatenated with a global code of the input mask (co-modulation). This is a lighter version of
that idea, sized for CPU training:

* a mapping network turns noise ``z`` into a style ``w``;
* a convolutional mask encoder gives skip features at every resolution (the layout must come out
  pixel-exact, which StyleGAN's constant input cannot do) and a global mask code;
* the decoder is built from modulated, demodulated convolutions whose per-sample style is
  ``[w, mask code]`` (co-modulation), plus per-pixel noise, ending in a modulated 1x1 ``to_rgb``.

Progressive growing, path-length regularisation and ADA are left out: they matter for FID at
high resolution, not for the pretext task, and each costs more CPU time than the whole network.

:class:`StyleEncoder` maps a real image back to a style, so a real tile can be reconstructed
through the cycle H&E -> mask -> H&E with its own colours (as in augmented CycleGAN / MUNIT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MappingNetwork", "ModulatedConv2d", "StyleEncoder", "StyledMaskGenerator"]


class MappingNetwork(nn.Module):
    """``z`` (normalised to unit RMS) -> ``w`` through ``layers`` linear + leaky-ReLU layers."""

    def __init__(self, z_dim: int = 64, w_dim: int = 128, layers: int = 4) -> None:
        super().__init__()
        self.z_dim = z_dim
        stack: list[nn.Module] = []
        for i in range(layers):
            stack += [nn.Linear(z_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*stack)

    def forward(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return self.net(z)


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled per sample by an affine map of a style vector,
    then (``demodulate``) renormalised so every output channel has unit expected variance again.

    StyleGAN2's formulation: ``w'_{ijk} = w_{ijk} s_i / sqrt(sum_{i,k} (w_{ijk} s_i)^2)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, demodulate: bool = True
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.affine = nn.Linear(style_dim, in_channels)
        # Bias 1: the scales start around 1, so the layer starts near a plain convolution while
        # the style already has an effect (a zero weight would give the mapping no gradient).
        nn.init.ones_(self.affine.bias)
        self.scale = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        scales = self.affine(style)  # (B, in)
        weight = self.weight * self.scale
        # Scaling the input channels instead of the kernel gives the same result with one ordinary
        # batched convolution (StyleGAN2's non-fused path), much faster on CPU than grouped kernels.
        out = F.conv2d(x * scales.to(x.dtype)[:, :, None, None], weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sum_{i,k} (w_{ijk} s_i)^2 = sum_i s_i^2 (sum_k w_{ijk}^2)
            energy = scales.pow(2) @ weight.pow(2).sum(dim=(2, 3)).T  # (B, out)
            out = out * torch.rsqrt(energy + 1e-8).to(out.dtype)[:, :, None, None]
        return out + self.bias.to(out.dtype)[None, :, None, None]


class _StyledLayer(nn.Module):
    """Modulated 3x3 conv, per-pixel noise with a learned strength per channel, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim)
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        x = self.conv(x, style)
        noise = torch.randn(x.shape[0], 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
        return F.leaky_relu(x + self.noise_strength.to(x.dtype)[None, :, None, None] * noise, 0.2)


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    )


class StyledMaskGenerator(nn.Module):
    """G_AB: a mask image ``(B, mask_channels, H, W)`` and a style ``w (B, w_dim)`` -> an image in
    ``[-1, 1]``. ``H`` and ``W`` must be multiples of ``2 ** (len(widths) - 1)``.

    Args:
        mask_channels: channels of the layout input.
        widths: encoder/decoder channels per resolution, full resolution first.
        w_dim: style size (the mapping network's output).
        mask_code_dim: size of the global mask code concatenated with ``w`` (co-modulation).
    """

    def __init__(
        self,
        mask_channels: int = 3,
        out_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 128),
        w_dim: int = 128,
        mask_code_dim: int = 64,
    ) -> None:
        super().__init__()
        self.config = {
            "mask_channels": mask_channels,
            "out_channels": out_channels,
            "widths": list(widths),
            "w_dim": w_dim,
            "mask_code_dim": mask_code_dim,
        }
        self.size_multiple = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            _conv_block(mask_channels if i == 0 else widths[i - 1], width, 1 if i == 0 else 2)
            for i, width in enumerate(widths)
        )
        self.mask_code = nn.Linear(widths[-1], mask_code_dim)
        style_dim = w_dim + mask_code_dim
        self.bottleneck = _StyledLayer(widths[-1], widths[-1], style_dim)
        # Decoder level i works at the resolution of encoder level i: upsampled deeper features
        # concatenated with that level's skip.
        self.decoder = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.decoder.append(
                nn.ModuleList(
                    [
                        _StyledLayer(widths[i + 1] + widths[i], widths[i], style_dim),
                        _StyledLayer(widths[i], widths[i], style_dim),
                    ]
                )
            )
        self.to_rgb = ModulatedConv2d(widths[0], out_channels, 1, style_dim, demodulate=False)

    def forward(self, mask: Tensor, w: Tensor) -> Tensor:
        if mask.shape[-1] % self.size_multiple or mask.shape[-2] % self.size_multiple:
            raise ValueError(
                f"StyledMaskGenerator needs sides divisible by {self.size_multiple}, "
                f"got {tuple(mask.shape[-2:])}"
            )
        skips = []
        x = mask
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        style = torch.cat([w, self.mask_code(x.mean(dim=(2, 3)))], dim=1)
        x = self.bottleneck(x, style)
        for level, (first, second) in zip(range(len(skips) - 2, -1, -1), self.decoder, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = second(first(torch.cat([x, skips[level]], dim=1), style), style)
        return torch.tanh(self.to_rgb(x, style))


class StyleEncoder(nn.Module):
    """Image -> style ``w``: strided convolutions, global average pooling, a linear layer."""

    def __init__(self, in_channels: int = 3, width: int = 32, w_dim: int = 128, stages: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = width * min(2**stage, 4)
            layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, w_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image).mean(dim=(2, 3)))
