"""U-Net segmenter / diffusion denoiser (registered as ``unet`` and ``unet_small``)."""

from pathseg.models.unet.model import UNet

__all__ = ["UNet"]
