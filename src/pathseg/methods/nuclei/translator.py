"""Unpaired translation between nucleus masks (domain A) and H&E (domain B), UNITPathSSL's pretext.

A pseudo instance map is drawn as a three-channel *mask image* (nucleus, contour, distance to the
contour): the contour channel keeps touching nuclei apart in the cycle, and the distance channel
tells the generator where a nucleus' centre is. G_AB renders H&E from it with a style; G_BA reads
H&E back into a mask image *and* into HoVer maps. The instance-guidance term trains those maps on
G_AB(A) against A's instances, which are known exactly: the segmenter learns nuclei from
generated images, the adversarial and cycle terms keep the generated images close to real H&E
and make G_BA read real tiles as well.

Everything lives in one :class:`Translator` module trained by :func:`pathseg.engine.fit` with one
optimizer: the discriminators' losses see detached fakes, and the generators' adversarial terms
call the discriminators with detached parameters, so neither side's loss moves the other side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries
from torch import Tensor, nn
from torch.func import functional_call

from pathseg.methods.nuclei.config import (
    MASK_CHANNELS,
    OUTPUT_CHANNELS,
    TranslationLossSection,
    TranslatorSection,
)
from pathseg.methods.nuclei.loss import hover_loss
from pathseg.models import create_model
from pathseg.models.translation import MappingNetwork, PatchDiscriminator, StyledMaskGenerator, StyleEncoder

__all__ = ["Translator", "export_segmenter", "mask_image", "render_mask_image"]


def mask_image(instances: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` float32 in ``[-1, 1]``: nucleus pixels, inner contours, and the distance to
    the nucleus' own contour divided by its largest value in that nucleus (1 at the centre)."""
    labels = np.asarray(instances)
    inside = labels > 0
    contour = find_boundaries(labels, mode="inner") & inside
    distance = ndimage.distance_transform_edt(inside & ~contour)
    peak = np.zeros(int(labels.max(initial=0)) + 1)
    if inside.any():
        np.maximum.at(peak, labels[inside], distance[inside])
    relative = np.where(inside, distance / np.maximum(peak[np.where(inside, labels, 0)], 1), 0.0)
    channels = np.stack([inside, contour, relative]).astype(np.float32)
    return channels * 2 - 1


def render_mask_image(tensor: Tensor) -> np.ndarray:
    """A mask image (``(3, H, W)`` in ``[-1, 1]``) for display: nucleus dark purple, contour white,
    the distance channel as brightness, background light grey."""
    channels = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    nucleus, contour, distance = channels
    base = np.array([235, 235, 235], dtype=np.float32)
    purple = np.array([70, 30, 120], dtype=np.float32)
    rgb = base[:, None, None] * (1 - nucleus) + purple[:, None, None] * nucleus * (0.6 + 0.4 * distance)
    rgb = rgb * (1 - contour) + 255 * contour
    return rgb.clip(0, 255).astype(np.uint8).transpose(1, 2, 0)


def _least_squares(scores: Tensor, target: float) -> Tensor:
    return (scores.float() - target).pow(2).mean()


def _frozen(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with gradients flowing to ``x`` only, not to the module's parameters."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, (x,))


class Translator(nn.Module):
    """G_AB (mapping network + :class:`StyledMaskGenerator`), a style encoder for the real-image
    cycle, G_BA (a registered segmenter with HoVer + mask-image outputs), D_A and D_B.

    ``forward(batch)`` returns ``(loss, logs)``: the sum of the generator and discriminator
    objectives (see the module docstring for why one sum is enough).
    """

    def __init__(self, section: TranslatorSection, loss: TranslationLossSection) -> None:
        super().__init__()
        self.section, self.weights = section, loss
        self.mapping = MappingNetwork(section.z_dim, section.w_dim)
        self.g_ab = StyledMaskGenerator(
            MASK_CHANNELS, 3, tuple(section.generator_widths), section.w_dim, section.mask_code_dim
        )
        self.style_encoder = StyleEncoder(3, 32, section.w_dim)
        self.g_ba = create_model(
            section.segmenter.name,
            in_channels=3,
            num_classes=OUTPUT_CHANNELS + MASK_CHANNELS,
            **section.segmenter.kwargs(),
        )
        self.d_a = PatchDiscriminator(
            MASK_CHANNELS, section.discriminator_width, section.discriminator_layers
        )
        self.d_b = PatchDiscriminator(3, section.discriminator_width, section.discriminator_layers)

    @property
    def size_multiple(self) -> int:
        return self.g_ab.size_multiple

    def random_styles(
        self, count: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        z = torch.randn(count, self.section.z_dim, generator=generator).to(device)
        return self.mapping(z)

    def generate(self, masks: Tensor, styles: Tensor) -> Tensor:
        """G_AB: mask images -> H&E in ``[-1, 1]``."""
        return self.g_ab(masks, styles)

    def read(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """G_BA: H&E -> (HoVer output ``(B, 4, H, W)``, mask image ``(B, 3, H, W)`` in ``[-1, 1]``)."""
        out = self.g_ba(images)
        return out[:, :OUTPUT_CHANNELS], torch.tanh(out[:, OUTPUT_CHANNELS:].float())

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        masks, real = batch["mask_image"], batch["image"]
        weights = self.weights
        count = masks.shape[0]

        fake_b = self.generate(masks, self.random_styles(count, masks.device))
        # G_BA reads generated and real tiles in one pass.
        hover, read_masks = self.read(torch.cat([fake_b, real]))
        hover_fake, rec_a, fake_a = hover[:count], read_masks[:count], read_masks[count:]
        rec_b = self.generate(fake_a, self.style_encoder(real))

        guidance, hover_logs = hover_loss(hover_fake, batch["nucleus"], batch["hv"], weights.hover)
        cycle_a = (rec_a - masks.float()).abs().mean()
        cycle_b = (rec_b.float() - real.float()).abs().mean()
        adversarial = _least_squares(_frozen(self.d_b, fake_b), 1.0) + _least_squares(
            _frozen(self.d_a, fake_a), 1.0
        )
        generator_loss = (
            weights.adversarial * adversarial
            + weights.cycle * (weights.cycle_a * cycle_a + weights.cycle_b * cycle_b) / 2
            + weights.instance_guidance * guidance
        )
        d_b = (_least_squares(self.d_b(real), 1.0) + _least_squares(self.d_b(fake_b.detach()), 0.0)) / 2
        d_a = (_least_squares(self.d_a(masks), 1.0) + _least_squares(self.d_a(fake_a.detach()), 0.0)) / 2
        logs = {
            "g_adversarial": float(adversarial.detach()),
            "cycle_a": float(cycle_a.detach()),
            "cycle_b": float(cycle_b.detach()),
            "guidance": float(guidance.detach()),
            "d_a": float(d_a.detach()),
            "d_b": float(d_b.detach()),
            **{f"guidance_{k}": v for k, v in hover_logs.items()},
        }
        return generator_loss + d_a + d_b, logs


def export_segmenter(translator: Translator) -> nn.Module:
    """G_BA as a plain nucleus segmenter: the same network with only the 4 HoVer outputs (the
    mask-image rows of the output layer dropped), ready for ``pathseg nuclei train --init``."""
    section = translator.section.segmenter
    segmenter = create_model(section.name, in_channels=3, num_classes=OUTPUT_CHANNELS, **section.kwargs())
    source = translator.g_ba.state_dict()
    state = {}
    for name, target in segmenter.state_dict().items():
        value = source[name]
        if value.shape != target.shape:  # the output layer: keep its first OUTPUT_CHANNELS rows
            value = value[: target.shape[0]]
        state[name] = value.clone()
    segmenter.load_state_dict(state)
    return segmenter
