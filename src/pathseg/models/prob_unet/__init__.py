"""Probabilistic U-Net (registered as ``prob_unet``) and its Gaussian latent encoder.

:class:`AxisAlignedGaussianEncoder` is public on its own: CIMD builds its prior p(z|x) and
posterior q(z|x,y) from it.
"""

from pathseg.models.prob_unet.model import (
    AxisAlignedGaussianEncoder,
    ProbUNet,
    make_prob_unet_loss,
    one_hot_mask,
    prob_unet_loss,
    sample_latents,
)

__all__ = [
    "AxisAlignedGaussianEncoder",
    "ProbUNet",
    "make_prob_unet_loss",
    "one_hot_mask",
    "prob_unet_loss",
    "sample_latents",
]
