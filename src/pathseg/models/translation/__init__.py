"""Networks for unpaired image translation (nucleus-aware pretraining): a mask -> H&E generator
with a style code, a style encoder, and patch discriminators.

They take two inputs (a layout and a style) or return patch scores, so they are built directly
rather than through the segmentation registry.
"""

from pathseg.models.translation.discriminator import PatchDiscriminator
from pathseg.models.translation.generator import (
    MappingNetwork,
    ModulatedConv2d,
    StyledMaskGenerator,
    StyleEncoder,
)

__all__ = ["MappingNetwork", "ModulatedConv2d", "PatchDiscriminator", "StyleEncoder", "StyledMaskGenerator"]
