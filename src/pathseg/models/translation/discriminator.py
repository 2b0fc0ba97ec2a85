"""PatchGAN discriminator: one realness score per overlapping patch (CycleGAN's design)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convolutions with instance norm; ``layers`` stride-2 stages and one stride-1
    stage give a receptive field of 70 px at ``layers=3``, about the size of a nucleus cluster at
    40x, so the score judges local texture and shape rather than the tile's layout.

    Args:
        in_channels: 3 for H&E, 3 for the mask images.
        width: channels of the first stage, doubled per stage up to ``8 * width``.
        layers: stride-2 stages.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "width": width, "layers": layers}
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for stage in range(1, layers + 1):
            out = width * min(2**stage, 8)
            stride = 2 if stage < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride, 1, bias=False),
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
