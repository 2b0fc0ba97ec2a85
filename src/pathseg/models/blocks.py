"""Layers shared by the architectures in :mod:`pathseg.models`.

The U-Net (plain segmenter and diffusion denoiser) is assembled from these pieces; keeping them
here lets later method code (CIMD, STEDM, GenSelfDiff) build variants without copying layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Downsample",
    "ResBlock",
    "SelfAttention2d",
    "Upsample",
    "group_norm",
    "num_groups_for",
    "timestep_embedding",
]


def num_groups_for(channels: int, groups: int) -> int:
    """Largest group count ``<= min(groups, channels)`` that divides ``channels``.

    Args:
        channels: Number of channels to normalise.
        groups: Preferred number of groups.

    Returns:
        A valid ``num_groups`` for :class:`torch.nn.GroupNorm`.

    Example:
        >>> num_groups_for(48, 32)
        24
    """
    if channels < 1 or groups < 1:
        raise ValueError(f"channels and groups must be positive, got {channels} and {groups}")
    g = min(groups, channels)
    # Walking down always terminates at 1, which divides everything.
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm whose group count is adapted so that it divides ``channels``.

    Args:
        channels: Number of channels to normalise.
        groups: Preferred number of groups; reduced to the largest divisor of ``channels`` not above it.

    Returns:
        A :class:`torch.nn.GroupNorm` module.

    Example:
        >>> group_norm(12, 8).num_groups
        6
    """
    return nn.GroupNorm(num_groups_for(channels, groups), channels)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) diffusion timesteps.

    Frequencies are geometrically spaced from 1 to ``1 / max_period`` as in the Transformer
    position encoding; the first half of the output holds cosines, the second half sines.

    Args:
        timesteps: Shape ``(B,)`` tensor of integer or float timesteps.
        dim: Embedding width; an odd width gets one zero column at the end.
        max_period: Longest period of the sinusoids.

    Returns:
        Float tensor of shape ``(B, dim)``.

    Example:
        >>> timestep_embedding(torch.tensor([0, 10]), 8).shape
        torch.Size([2, 8])
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm → SiLU → 3x3 conv) twice, plus a skip path.

    When ``emb_dim > 0`` an embedding vector (timestep and/or conditioning) modulates the second
    normalisation by FiLM: ``h = norm(h) * (1 + scale) + shift`` with ``scale, shift`` predicted
    from the embedding. Scale-shift is used instead of a plain addition because it lets the
    embedding gate features multiplicatively, which improved diffusion U-Nets (Dhariwal & Nichol,
    2021) at the cost of one wider linear layer.

    Args:
        in_channels: Input channels.
        out_channels: Output channels; a 1x1 conv adapts the skip path when they differ.
        emb_dim: Width of the embedding vector, 0 for no embedding input.
        norm_groups: Preferred GroupNorm group count.
        dropout: Dropout probability before the second conv.

    Example:
        >>> block = ResBlock(16, 32, emb_dim=64)
        >>> block(torch.randn(2, 16, 8, 8), torch.randn(2, 64)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int = 0,
        norm_groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels) if emb_dim > 0 else None
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Apply the block.

        Args:
            x: Feature map ``(B, in_channels, H, W)``.
            emb: Embedding ``(B, emb_dim)``; required exactly when the block was built with ``emb_dim > 0``.

        Returns:
            Feature map ``(B, out_channels, H, W)``.
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with an embedding input; pass emb")
            scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
            h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        elif emb is not None:
            raise ValueError("this ResBlock has no embedding input (emb_dim=0) but emb was given")
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all pixels of a feature map, with a residual connection.

    Uses :func:`torch.nn.functional.scaled_dot_product_attention`, which dispatches to a fused
    (flash / memory-efficient) kernel where available, so memory does not grow with the full
    ``(HW)^2`` attention matrix on GPU.

    Args:
        channels: Feature channels.
        head_channels: Channels per head; falls back to a single head when it does not divide ``channels``.
        norm_groups: Preferred GroupNorm group count.

    Example:
        >>> attn = SelfAttention2d(64)
        >>> attn.num_heads, attn(torch.randn(1, 64, 8, 8)).shape
        (2, torch.Size([1, 64, 8, 8]))
    """

    def __init__(self, channels: int, head_channels: int = 32, norm_groups: int = 8) -> None:
        super().__init__()
        divisible = channels % head_channels == 0 and channels >= head_channels
        self.num_heads = channels // head_channels if divisible else 1
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the ``H * W`` positions.

        Args:
            x: Feature map ``(B, C, H, W)``.

        Returns:
            ``x`` plus the projected attention output, same shape.
        """
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # (B, 3, heads, head_dim, HW) -> three (B, heads, HW, head_dim) tensors, the layout SDPA expects.
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve the spatial size with a learned stride-2 3x3 conv (keeps the channel count).

    Args:
        channels: Feature channels.

    Example:
        >>> Downsample(8)(torch.randn(1, 8, 16, 16)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``(B, C, H, W)`` to ``(B, C, ceil(H/2), ceil(W/2))``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour resize then a 3x3 conv.

    Nearest + conv is used instead of a transposed conv because it avoids checkerboard artefacts.

    Args:
        channels: Feature channels.

    Example:
        >>> Upsample(8)(torch.randn(1, 8, 8, 8)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``(B, C, H, W)`` to ``(B, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
