"""How a denoiser sees its condition, and classifier-free guidance.

A denoiser is any module called as ``model(x, timesteps, cond)`` (the signature of
:class:`pathseg.models.UNet`). Two kinds of condition reach it without the diffusion code knowing
what they mean:

* ``Condition.image``: channels concatenated to ``x_t`` (CIMD's image, STEDM's layout); count them
  in the network's ``in_channels``.
* ``Condition.vector``: passed as ``cond`` (a style vector, a class one-hot); the UNet adds its
  embedding to the time embedding.

Classifier-free guidance (Ho & Salimans 2022) trains one network for both the conditional and the
unconditional case by replacing the condition with a *null* value for a random fraction of the
samples, and at sampling time extrapolates ``out_u + s (out_c - out_u)``. :class:`Guidance` says
which parts of the condition are dropped and what "null" is; :func:`denoise` is the one place
where the network is called, so every sampler gets guidance for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from pathseg.errors import ConfigError

__all__ = ["Condition", "Guidance", "denoise"]

Component = Literal["image", "vector"]


@dataclass
class Condition:
    """What the denoiser is conditioned on; both parts are optional.

    Args:
        image: ``(B, C_cond, H, W)``, concatenated to ``x_t`` along channels.
        vector: ``(B, D)``, passed to the network as ``cond``.
    """

    image: Tensor | None = None
    vector: Tensor | None = None

    def model_input(self, x_t: Tensor) -> Tensor:
        if self.image is None:
            return x_t
        if self.image.shape[0] != x_t.shape[0] or self.image.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"condition image {tuple(self.image.shape)} does not match x_t {tuple(x_t.shape)} "
                "(batch and spatial size must agree)"
            )
        return torch.cat([x_t, self.image.to(x_t.dtype)], dim=1)

    def repeat(self, times: int) -> Condition:
        """The condition stacked ``times`` along the batch (for the conditional/unconditional pair)."""
        return Condition(
            None if self.image is None else self.image.repeat(times, 1, 1, 1),
            None if self.vector is None else self.vector.repeat(times, 1),
        )


@dataclass
class Guidance:
    """Classifier-free guidance: which condition parts are dropped, to what, and how strongly to guide.

    Args:
        components: condition parts replaced by their null value (``"vector"`` and/or ``"image"``);
            the others (e.g. STEDM's layout) are always given.
        drop_probability: training-time fraction of samples whose ``components`` are nulled.
        scale: sampling-time guidance scale ``s``; 1 is plain conditional sampling (one forward pass),
            0 is unconditional.
        rescale: ``phi`` of Lin et al. (2024) "Common diffusion noise schedules ...": blend the guided
            output with a copy rescaled to the conditional output's standard deviation (STEDM uses
            0.7), which counters over-saturation at large ``s``. The std is taken per sample over all
            of channels, height and width, and the blend partner is the guided output (STEDM's code
            takes the std over channels and height only and blends with the conditional output).
        null_vector: the "no condition" vector, ``(D,)``; zeros when None.
        null_image_value: constant that fills a dropped condition image (STEDM used -2, outside the
            data range, so the network can tell it from any real layout).
    """

    components: Sequence[Component] = ("vector",)
    drop_probability: float = 0.0
    scale: float = 1.0
    rescale: float = 0.0
    null_vector: Tensor | None = None
    null_image_value: float = 0.0

    def __post_init__(self) -> None:
        bad = [c for c in self.components if c not in ("image", "vector")]
        if bad:
            raise ConfigError(f"guidance components must be 'image' and/or 'vector', got {bad}")
        if not 0.0 <= self.drop_probability < 1.0:
            raise ConfigError(f"guidance drop_probability must be in [0, 1), got {self.drop_probability}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ConfigError(f"guidance rescale must be in [0, 1], got {self.rescale}")

    def nulled(self, condition: Condition, which: Tensor | None = None) -> Condition:
        """``condition`` with the guided components replaced by null for the samples in ``which``.

        Args:
            which: boolean ``(B,)``; None nulls every sample.
        """
        image, vector = condition.image, condition.vector
        if "image" in self.components and image is not None:
            null = torch.full_like(image, self.null_image_value)
            image = null if which is None else torch.where(which.view(-1, 1, 1, 1), null, image)
        if "vector" in self.components and vector is not None:
            null = (
                torch.zeros_like(vector)
                if self.null_vector is None
                else self.null_vector.to(vector).expand_as(vector)
            )
            vector = null if which is None else torch.where(which.view(-1, 1), null, vector)
        return replace(condition, image=image, vector=vector)

    def drop_for_training(self, condition: Condition, generator: torch.Generator | None = None) -> Condition:
        """Null each sample's guided components with probability ``drop_probability``."""
        if self.drop_probability == 0:
            return condition
        reference = condition.vector if condition.vector is not None else condition.image
        if reference is None:
            return condition
        draw = torch.rand(reference.shape[0], generator=generator, device="cpu")
        return self.nulled(condition, (draw < self.drop_probability).to(reference.device))


def denoise(
    model: nn.Module,
    x_t: Tensor,
    t: Tensor,
    condition: Condition | None = None,
    guidance: Guidance | None = None,
) -> Tensor:
    """Network output at ``(x_t, t)`` under the condition, with classifier-free guidance when asked.

    With guidance (``scale != 1``) the conditional and unconditional inputs run as one batch of
    ``2B`` (one forward pass instead of STEDM's two).
    """
    condition = condition or Condition()
    t = torch.as_tensor(t, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    if guidance is None or guidance.scale == 1.0:
        return model(condition.model_input(x_t), t, condition.vector)
    unconditional = guidance.nulled(condition)
    paired = Condition(
        None if condition.image is None else torch.cat([condition.image, unconditional.image]),
        None if condition.vector is None else torch.cat([condition.vector, unconditional.vector]),
    )
    both = model(paired.model_input(torch.cat([x_t, x_t])), torch.cat([t, t]), paired.vector)
    out_c, out_u = both.float().chunk(2)
    guided = out_u + guidance.scale * (out_c - out_u)
    if guidance.rescale > 0:
        dims = tuple(range(1, guided.ndim))
        rescaled = guided * (out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
        guided = guidance.rescale * rescaled + (1 - guidance.rescale) * guided
    return guided
