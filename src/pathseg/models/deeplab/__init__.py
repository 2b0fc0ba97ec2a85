"""ResNet encoder + DeepLabV3+ decoder (``deeplabv3plus`` and its ResNet-18/50 presets)."""

from pathseg.models.deeplab.model import ASPP, DeepLabV3Plus, ResNetEncoder

__all__ = ["ASPP", "DeepLabV3Plus", "ResNetEncoder"]
