"""HoVer-Net's objective on a four-channel output (nucleus logits, h map, v map)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pathseg.losses import cross_entropy, soft_dice_loss
from pathseg.methods.nuclei.config import HoverLossSection
from pathseg.methods.nuclei.data import IGNORE

__all__ = ["hover_loss", "map_gradients"]


def _sobel_kernels(size: int, device: torch.device) -> Tensor:
    """``(2, 1, size, size)`` Sobel-like kernels (d/dx, d/dy), HoVer-Net's 5-tap MSGE filters:
    a centred difference weighted by distance, normalised so a unit ramp has slope ~1."""
    half = size // 2
    r = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    ry, rx = torch.meshgrid(r, r, indexing="ij")  # rx varies along columns
    dx = rx / (rx * rx + ry * ry).clamp(min=1e-6)
    dx = dx / (dx * rx).sum()  # correlation with a unit ramp x gives exactly 1
    return torch.stack([dx, dx.T])[:, None]


def map_gradients(hv: Tensor, size: int = 5) -> Tensor:
    """``(B, 2, H, W)``: d(h)/dx and d(v)/dy of ``hv (B, 2, H, W)`` (replicate-padded)."""
    kernels = _sobel_kernels(size, hv.device)
    padded = F.pad(hv.float(), (size // 2,) * 4, mode="replicate")
    dh = F.conv2d(padded[:, :1], kernels[:1])
    dv = F.conv2d(padded[:, 1:], kernels[1:])
    return torch.cat([dh, dv], dim=1)


def hover_loss(output: Tensor, mask: Tensor, hv: Tensor, weights: HoverLossSection) -> tuple[Tensor, dict]:
    """``output (B, 4, H, W)``; ``mask (B, H, W)`` 0/1/255; ``hv (B, 2, H, W)``.

    MSE over every labelled pixel (background targets are 0); MSGE over nucleus pixels only, as
    the gradient jumps at nucleus borders are the target's own, not errors.
    """
    logits, maps = output[:, :2], output[:, 2:].float()
    labelled = (mask != IGNORE).unsqueeze(1).float()
    nucleus = (mask == 1).unsqueeze(1).float()
    terms = {
        "ce": cross_entropy(logits, mask, IGNORE),
        "dice": soft_dice_loss(logits, mask, IGNORE),
        "mse": ((maps - hv) ** 2 * labelled).sum() / (2 * labelled.sum()).clamp(min=1),
        "msge": ((map_gradients(maps) - map_gradients(hv)) ** 2 * nucleus).sum()
        / (2 * nucleus.sum()).clamp(min=1),
    }
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
