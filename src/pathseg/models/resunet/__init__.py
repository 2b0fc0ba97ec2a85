"""ResNet encoder + U-Net decoder (``resunet`` and its ResNet-18/34 presets)."""

from pathseg.models.resunet.model import ResUNet

__all__ = ["ResUNet"]
