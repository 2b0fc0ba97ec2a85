"""U-Net usable as a plain segmenter or as a (conditional) diffusion denoiser.

Own implementation rather than ``monai.networks.nets.DiffusionModelUNet`` because pathseg needs
FiLM conditioning on an arbitrary vector, an in-place denoiser → segmenter conversion
(:meth:`UNet.to_segmenter`), a swappable ``head`` and explicit input-size errors, and wants
stable parameter names that it controls for its checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathseg.errors import ConfigError
from pathseg.models.blocks import (
    Downsample,
    ResBlock,
    SelfAttention2d,
    Upsample,
    group_norm,
    timestep_embedding,
)
from pathseg.models.registry import register_preset

__all__ = ["UNet"]


class _Level(nn.Module):
    """One resolution level: ``num_blocks`` ResBlocks, each optionally followed by self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        emb_dim: int,
        attention: bool,
        norm_groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, emb_dim, norm_groups, dropout)
            for i in range(num_blocks)
        )
        self.attn = (
            nn.ModuleList(SelfAttention2d(out_channels, norm_groups=norm_groups) for _ in range(num_blocks))
            if attention
            else None
        )

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        for i, block in enumerate(self.res):
            x = block(x, emb)
            if self.attn is not None:
                x = self.attn[i](x)
        return x


class UNet(nn.Module):
    """Encoder-decoder with concatenated skip connections, optional time/vector conditioning.

    Level ``i`` works at ``base_channels * channel_mults[i]`` channels and stride ``2**i``; each
    encoder level saves one skip tensor, the decoder concatenates it back at the same resolution.
    The output head is GroupNorm → SiLU (``out_norm``) followed by a 1x1 conv named ``head``,
    which :meth:`to_segmenter` swaps.

    Conditioning (all ResBlocks receive one embedding vector, applied as FiLM scale-shift):

    * ``time_embedding=True``: a diffusion denoiser. ``forward`` requires ``timesteps`` ``(B,)``,
      which are embedded sinusoidally and passed through a 2-layer MLP.
    * ``cond_dim > 0``: ``forward`` requires ``cond`` ``(B, cond_dim)`` (a style vector, a one-hot
      class label, ...), mapped by its own 2-layer MLP and *added* to the time embedding. Without
      ``time_embedding`` the cond embedding is used alone. Pass zeros for "unconditional"
      (classifier-free guidance).
    * Conditioning *images* (CIMD's image, STEDM's layout) are not a separate input: the caller
      concatenates them to ``x`` along channels and counts them in ``in_channels``.

    Parameter counts (3 → 2 channels): defaults (``base_channels=32``, mults ``(1, 2, 4, 8)``,
    2 res blocks) 10.4 M; the ``"unet_small"`` preset (base 16, 1 res block) 1.8 M; defaults with
    ``time_embedding=True`` 11.1 M.

    Args:
        in_channels: Input channels (image plus any concatenated conditioning channels).
        out_channels: Output channels (classes, or noise channels for a denoiser).
        base_channels: Channels of the first level.
        channel_mults: Channel multiplier per level; the number of levels fixes the size constraint.
        num_res_blocks: ResBlocks per level (encoder and decoder each).
        attention_levels: Indices into ``channel_mults`` whose ResBlocks are followed by self-attention.
        mid_attention: Put self-attention between the two bottleneck ResBlocks.
        norm_groups: Preferred GroupNorm group count (reduced where it does not divide the channels).
        dropout: Dropout inside ResBlocks.
        time_embedding: Build the timestep path (diffusion denoiser).
        cond_dim: Width of an optional conditioning vector, 0 for none.
        fixed_timestep: Timestep used when ``forward`` gets none; set by :meth:`to_segmenter`.
            Needs ``time_embedding=True``.

    Example:
        >>> net = UNet(out_channels=3, base_channels=16, channel_mults=(1, 2), time_embedding=True)
        >>> net(torch.randn(2, 3, 32, 32), timesteps=torch.tensor([1, 500])).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (),
        mid_attention: bool = False,
        norm_groups: int = 8,
        dropout: float = 0.0,
        time_embedding: bool = False,
        cond_dim: int = 0,
        fixed_timestep: int | None = None,
    ) -> None:
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attention_levels = tuple(sorted({int(i) for i in attention_levels}))
        self._validate(
            in_channels, out_channels, base_channels, channel_mults, num_res_blocks, attention_levels, dropout
        )
        if cond_dim < 0:
            raise ConfigError(f"UNet: cond_dim must be >= 0, got {cond_dim}")
        if fixed_timestep is not None and not time_embedding:
            raise ConfigError("UNet: fixed_timestep needs time_embedding=True")

        self.in_channels = in_channels
        self.num_levels = len(channel_mults)
        self.time_embedding = time_embedding
        self.cond_dim = cond_dim
        # Stored in the config vocabulary of create_model (num_classes, lists) so that
        # create_model(**config) rebuilds the model, also after a JSON round trip.
        self.config: dict[str, Any] = {
            "name": "unet",
            "in_channels": in_channels,
            "num_classes": out_channels,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "attention_levels": list(attention_levels),
            "mid_attention": mid_attention,
            "norm_groups": norm_groups,
            "dropout": dropout,
            "time_embedding": time_embedding,
            "cond_dim": cond_dim,
            "fixed_timestep": fixed_timestep,
        }

        emb_dim = 4 * base_channels if (time_embedding or cond_dim > 0) else 0
        self.time_embed = (
            nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if time_embedding
            else None
        )
        self.cond_embed = (
            nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cond_dim > 0
            else None
        )
        # A buffer (not a plain attribute) so it follows .to(device) and is saved with the weights.
        self.register_buffer(
            "fixed_timestep", None if fixed_timestep is None else torch.tensor(int(fixed_timestep))
        )

        widths = [base_channels * m for m in channel_mults]
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base_channels
        for i, width in enumerate(widths):
            self.down.append(
                _Level(ch, width, num_res_blocks, emb_dim, i in attention_levels, norm_groups, dropout)
            )
            self.downsample.append(Downsample(width) if i < self.num_levels - 1 else nn.Identity())
            ch = width

        self.mid1 = ResBlock(ch, ch, emb_dim, norm_groups, dropout)
        self.mid_attn = SelfAttention2d(ch, norm_groups=norm_groups) if mid_attention else None
        self.mid2 = ResBlock(ch, ch, emb_dim, norm_groups, dropout)

        # Built deepest level first; up[j] serves level num_levels - 1 - j.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(self.num_levels)):
            width = widths[i]
            self.up.append(
                _Level(
                    ch + width, width, num_res_blocks, emb_dim, i in attention_levels, norm_groups, dropout
                )
            )
            self.upsample.append(Upsample(width) if i > 0 else nn.Identity())
            ch = width

        self.out_norm = group_norm(ch, norm_groups)
        self.head = nn.Conv2d(ch, out_channels, 1)

    @staticmethod
    def _validate(
        in_channels: int,
        out_channels: int,
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attention_levels: tuple[int, ...],
        dropout: float,
    ) -> None:
        for label, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
        ):
            if value < 1:
                raise ConfigError(f"UNet: {label} must be >= 1, got {value}")
        if not channel_mults or min(channel_mults) < 1:
            raise ConfigError(
                f"UNet: channel_mults must be a non-empty list of positive ints, got {channel_mults}"
            )
        bad = [i for i in attention_levels if not 0 <= i < len(channel_mults)]
        if bad:
            raise ConfigError(
                f"UNet: attention_levels {bad} out of range for {len(channel_mults)} levels "
                f"(valid: 0..{len(channel_mults) - 1})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"UNet: dropout must be in [0, 1), got {dropout}")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (self.num_levels - 1)

    def _embedding(self, x: Tensor, timesteps: Tensor | None, cond: Tensor | None) -> Tensor | None:
        batch = x.shape[0]
        emb = None
        if self.time_embed is not None:
            if timesteps is None:
                if self.fixed_timestep is None:
                    raise ValueError(
                        "this UNet has a time embedding (diffusion denoiser): pass timesteps (B,)"
                    )
                timesteps = self.fixed_timestep
            timesteps = torch.as_tensor(timesteps, device=x.device)
            if timesteps.ndim == 0:
                timesteps = timesteps.expand(batch)
            if timesteps.shape != (batch,):
                raise ValueError(f"timesteps must have shape ({batch},), got {tuple(timesteps.shape)}")
            emb = self.time_embed(timestep_embedding(timesteps, self.time_embed[0].in_features).to(x.dtype))
        elif timesteps is not None:
            raise ValueError(
                "this UNet has no time embedding (time_embedding=False) but timesteps were given"
            )

        if self.cond_embed is not None:
            if cond is None:
                raise ValueError(
                    f"this UNet expects a conditioning vector cond of shape ({batch}, {self.cond_dim}); "
                    "pass zeros for unconditional use"
                )
            if cond.shape != (batch, self.cond_dim):
                raise ValueError(f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}")
            c = self.cond_embed(cond.to(x.dtype))
            emb = c if emb is None else emb + c
        elif cond is not None:
            raise ValueError("this UNet has no conditioning vector (cond_dim=0) but cond was given")
        return emb

    def forward(self, x: Tensor, timesteps: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Run the network.

        Args:
            x: Images ``(B, in_channels, H, W)`` with ``H`` and ``W`` multiples of :attr:`size_multiple`.
            timesteps: ``(B,)`` (or scalar) timesteps; required iff ``time_embedding`` and no
                ``fixed_timestep``; overrides ``fixed_timestep`` when given.
            cond: ``(B, cond_dim)`` conditioning vector; required iff ``cond_dim > 0``.

        Returns:
            ``(B, out_channels, H, W)`` logits or predicted noise.

        Raises:
            ValueError: Wrong channel count, non-divisible size, or missing/unexpected conditioning.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            up_h, up_w = -(-h // m) * m, -(-w // m) * m
            raise ValueError(
                f"UNet with {self.num_levels} levels needs H and W divisible by {m}; got {h}x{w} "
                f"(pad to {up_h}x{up_w} or crop to {h // m * m}x{w // m * m})"
            )
        emb = self._embedding(x, timesteps, cond)

        x = self.stem(x)
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            x = level(x, emb)
            skips.append(x)
            x = down(x)
        x = self.mid1(x, emb)
        if self.mid_attn is not None:
            x = self.mid_attn(x)
        x = self.mid2(x, emb)
        for level, up in zip(self.up, self.upsample, strict=True):
            x = level(torch.cat([x, skips.pop()], dim=1), emb)
            x = up(x)
        return self.head(F.silu(self.out_norm(x)))

    def to_segmenter(self, num_classes: int, fixed_timestep: int = 0) -> UNet:
        """Turn the network (typically a pretrained denoiser) into a segmenter, in place.

        The output head is replaced by a freshly initialised 1x1 conv to ``num_classes``; for a
        network with a time embedding, ``fixed_timestep`` is stored so that ``forward(x)`` works
        without timesteps (GenSelfDiff: fix ``t``, replace the head, fine-tune everything). All
        other weights are kept. ``config`` is updated, so saved checkpoints rebuild the segmenter.

        Args:
            num_classes: Number of segmentation classes.
            fixed_timestep: Timestep fed to the time embedding; ignored without time embedding.

        Returns:
            ``self``.

        Example:
            >>> net = UNet(out_channels=3, base_channels=8, channel_mults=(1, 2), time_embedding=True)
            >>> net.to_segmenter(num_classes=5)(torch.randn(1, 3, 16, 16)).shape
            torch.Size([1, 5, 16, 16])
        """
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        old = self.head
        self.head = nn.Conv2d(old.in_channels, num_classes, 1).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        self.config["num_classes"] = num_classes
        if self.time_embed is not None:
            self.fixed_timestep = torch.tensor(int(fixed_timestep), device=old.weight.device)
            self.config["fixed_timestep"] = int(fixed_timestep)
        return self


register_preset("unet", UNet, rename={"out_channels": "num_classes"})
register_preset(
    "unet_small",
    UNet,
    rename={"out_channels": "num_classes"},
    base_channels=16,
    channel_mults=(1, 2, 4, 8),
    num_res_blocks=1,
)
