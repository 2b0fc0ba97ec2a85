"""A multi-label patch classifier built so that its class activation maps are cheap and sharp.

ResNet encoder at output stride 8 (dilated ``layer3``/``layer4``, as the ResNet-38 of MLPS keeps a
224 px patch at 28x28) -> Dropout2d -> global average pool -> bias-free 1x1 conv ``fc``. Because
pooling and ``fc`` commute, ``fc`` applied to the feature map *is* the CAM of every class.

Progressive Dropout Attention (PDA, from MLPS) runs in training when a ``pda_gamma`` is given:
each class map is zeroed where it exceeds ``gamma`` times its maximum, the maps are averaged
over classes and multiply the features. Hiding the most discriminative region forces the network
to find the rest of the tissue, which gives CAMs that cover more than the single best spot.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from pathseg.errors import ConfigError
from pathseg.models.deeplab.model import ResNetEncoder
from pathseg.models.registry import register_preset

__all__ = ["CAMClassifier", "pda_attention"]


def pda_attention(class_maps: Tensor, gamma: float) -> Tensor:
    """PDA attention map ``(B, 1, h, w)`` from class maps ``(B, C, h, w)``.

    ``A = mean_c ReLU(M_c) * 1[ReLU(M_c) <= gamma * max ReLU(M_c)]``: the mean runs over the
    configured classes (MLPS divides by a hard-coded 4).
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"PDA gamma must be in (0, 1], got {gamma}")
    maps = F.relu(class_maps)
    peak = maps.amax(dim=(2, 3), keepdim=True)
    kept = maps * (maps <= gamma * peak)
    return kept.mean(dim=1, keepdim=True)


class CAMClassifier(nn.Module):
    """Multi-label classifier ``(B, 3, H, W) -> logits (B, C)`` with class activation maps.

    Args:
        encoder_depth: ResNet depth, 18, 34 or 50.
        in_channels: Input channels.
        num_classes: Number of labels (sigmoid outputs, not mutually exclusive).
        output_stride: 8 (default, dense CAMs) or 16.
        norm: ``"batch"`` or ``"group"``.
        dropout: Dropout2d rate on the features before pooling (MLPS: 0.5).

    Example:
        >>> net = CAMClassifier(encoder_depth=18, num_classes=4)
        >>> net(torch.randn(2, 3, 64, 64)).shape, net.class_maps(torch.randn(2, 3, 64, 64)).shape
        (torch.Size([2, 4]), torch.Size([2, 4, 8, 8]))
    """

    #: Image-level output: ``forward`` returns ``(B, C)``, not a dense map.
    output_kind = "image"

    def __init__(
        self,
        encoder_depth: int = 18,
        in_channels: int = 3,
        num_classes: int = 4,
        output_stride: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ConfigError(f"CAMClassifier: output_stride must be 8 or 16, got {output_stride}")
        if num_classes < 1 or not 0 <= dropout < 1:
            raise ConfigError("CAMClassifier: num_classes must be >= 1 and dropout in [0, 1)")
        self.in_channels = in_channels
        self.config: dict[str, Any] = {
            "name": f"cam_resnet{encoder_depth}",
            "encoder_depth": encoder_depth,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "output_stride": output_stride,
            "norm": norm,
            "dropout": dropout,
        }
        self.encoder = ResNetEncoder(encoder_depth, in_channels, output_stride, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.fc = nn.Conv2d(self.encoder.out_channels[-1], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc.weight)

    def features(self, x: Tensor) -> Tensor:
        """Last encoder feature map ``(B, F, H/os, W/os)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CAMClassifier expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.encoder(x)[-1]

    def class_maps(self, x: Tensor) -> Tensor:
        """Raw class activation maps ``(B, C, H/os, W/os)`` (no ReLU, no normalisation)."""
        return self.fc(self.features(x))

    def forward(self, x: Tensor, pda_gamma: float | None = None) -> Tensor:
        """Class logits ``(B, C)``; PDA is applied in training when ``pda_gamma`` is given."""
        feats = self.features(x)
        if self.training and pda_gamma is not None:
            feats = feats * pda_attention(self.fc(feats), pda_gamma)
        pooled = F.adaptive_avg_pool2d(self.dropout(feats), 1)
        return self.fc(pooled).flatten(1)


# Names follow the encoder depth so a saved config ("name": "cam_resnet18") rebuilds the network.
register_preset("cam_resnet18", CAMClassifier, encoder_depth=18)
register_preset("cam_resnet34", CAMClassifier, encoder_depth=34)
register_preset("cam_resnet50", CAMClassifier, encoder_depth=50)
