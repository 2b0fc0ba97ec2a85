"""Segmentation networks: a name registry, U-Net (segmenter / diffusion denoiser),
DeepLabV3+, a ResNet-encoder U-Net and the Probabilistic U-Net.

Example:
    >>> from pathseg.models import create_model, list_models
    >>> model = create_model("unet_small", in_channels=3, num_classes=2)
    >>> rebuilt = create_model(**model.config)
"""

from pathseg.models.registry import MODELS, create_model, list_models, model_arguments, register_model

# Imported after the registry so that their register_preset calls populate MODELS.
from pathseg.models.unet import UNet  # isort: skip
from pathseg.models.deeplab import DeepLabV3Plus, ResNetEncoder  # isort: skip
from pathseg.models.resunet import ResUNet  # isort: skip
from pathseg.models.classifier import CAMClassifier  # isort: skip
from pathseg.models.prob_unet import ProbUNet  # isort: skip
from pathseg.models.weights import load_weights, model_from_file, read_config, save_weights  # isort: skip

__all__ = [
    "MODELS",
    "CAMClassifier",
    "DeepLabV3Plus",
    "ProbUNet",
    "ResNetEncoder",
    "ResUNet",
    "UNet",
    "create_model",
    "list_models",
    "load_weights",
    "model_arguments",
    "model_from_file",
    "read_config",
    "register_model",
    "save_weights",
]
